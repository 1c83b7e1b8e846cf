"""``framepool demo``: the stack, synthetic cameras, and a live table.

Cameras submit at their frame rate with a deadline; the table reads every
camera's result stream and shows frames/s, latency, queue depth and batch size.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from typing import Any

import redis
from rich.console import Console
from rich.live import Live
from rich.table import Table

from framepool import keys
from framepool.errors import FramepoolError
from framepool.log import configure_logging, get_logger
from framepool.settings import Settings
from framepool.stack import Stack

log = get_logger(__name__)


def _camera_loop(
    producer: Any,
    camera: Any,
    model_id: str,
    fps: float,
    stop: threading.Event,
    counters: dict[str, int],
) -> None:
    period = 1.0 / fps
    next_at = time.monotonic()
    for frame in camera.frames():
        if stop.is_set():
            return
        try:
            producer.submit(
                model_id,
                frame.image,
                camera_id=camera.camera_id,
                seq=frame.seq,
                captured_at=time.time(),
                deadline_ms=max(1000.0, 5000.0 / fps),
            )
            counters["sent"] += 1
        except FramepoolError as exc:
            counters["refused"] += 1
            log.warning("demo_submit_failed", camera_id=camera.camera_id, error=str(exc))
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))


def gpu_use(client: redis.Redis) -> str:
    """Utilization and memory of each GPU, from the workers' heartbeats ("-" without GPUs)."""
    try:
        names = sorted(n.decode() for n in client.smembers(keys.WORKERS))
        beats = client.mget([keys.worker_heartbeat(n) for n in names]) if names else []
    except redis.RedisError:
        return "?"
    seen: dict[str, str] = {}
    for raw in beats:
        if not raw:
            continue
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            for g in json.loads(raw).get("nvml", {}).get("gpus", []):
                used, total = g.get("memory_used_mb"), g.get("memory_total_mb")
                mem = f" {used / 1024:.1f}/{total / 1024:.0f} GB" if used and total else ""
                seen[g.get("uuid") or str(g.get("index"))] = (
                    f"gpu{g.get('index')} {g.get('utilization_percent', '?')}%{mem}"
                )
    return ", ".join(seen.values()) or "-"


class _Stats:
    def __init__(self) -> None:
        self.done: deque[tuple[float, dict[str, Any]]] = deque(maxlen=5000)
        self.total = 0
        self.by_status: dict[str, int] = {}

    def add(self, result: dict[str, Any]) -> None:
        self.done.append((time.monotonic(), result))
        self.total += 1
        self.by_status[result["status"]] = self.by_status.get(result["status"], 0) + 1

    def table(
        self, depth: int, sent: int, refused: int, gpu: str = "-", window: float = 5.0
    ) -> Table:
        now = time.monotonic()
        recent = [r for t, r in self.done if now - t <= window]
        lat = sorted(r["timings_ms"]["total"] for r in recent)
        sizes = [r["batch_size"] for r in recent if r["batch_size"]]

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))]:.1f}" if lat else "-"

        devices = sorted({r.get("device") or "?" for r in recent})
        t = Table(title="framepool demo (Ctrl-C stops everything)")
        for col in (
            "frames/s",
            "p50 ms",
            "p99 ms",
            "queue",
            "batch (avg)",
            "sent",
            "results",
            "status",
            "device",
            "GPU use",
        ):
            t.add_column(col)
        t.add_row(
            f"{len(recent) / window:.1f}",
            pct(0.5),
            pct(0.99),
            str(depth),
            f"{sum(sizes) / len(sizes):.1f}" if sizes else "-",
            str(sent),
            str(self.total),
            " ".join(f"{k}={v}" for k, v in sorted(self.by_status.items())),
            ", ".join(devices) + ("  (no GPU: CPU worker)" if devices == ["cpu"] else ""),
            gpu,
        )
        return t


def run_demo(
    settings: Settings,
    *,
    duration: float | None,
    cameras: int,
    fps: float,
    model_id: str,
    gpus: str,
) -> None:
    from producer import FrameProducer
    from producer.sources.synthetic import SyntheticCamera

    configure_logging(settings.model_copy(update={"log_level": "WARNING", "log_format": "console"}))
    with Stack(settings, gpus=gpus, workers_per_gpu=1, models=[model_id]) as stack:
        stack.print_urls()
        print("waiting for the workers to load their models ...")
        if not stack.wait_ready():
            raise FramepoolError("workers did not become ready; see the logs folder above")
        psettings = settings.model_copy(update={"redis_url": stack.redis_url})
        producer = FrameProducer(psettings)
        stop = threading.Event()
        counters = {"sent": 0, "refused": 0}
        cams = [SyntheticCamera(f"cam{i + 1}", fps=fps, seed=i) for i in range(cameras)]
        threads = [
            threading.Thread(
                target=_camera_loop,
                daemon=True,
                args=(producer, cam, model_id, fps, stop, counters),
            )
            for cam in cams
        ]
        for th in threads:
            th.start()
        client = redis.Redis.from_url(stack.redis_url)
        last = {keys.result_stream(c.camera_id): "$" for c in cams}
        stats = _Stats()
        console = Console()
        ends = time.monotonic() + duration if duration else float("inf")
        gpu, gpu_at = "-", 0.0
        try:
            with Live(stats.table(0, 0, 0), refresh_per_second=2, console=console) as live:
                while time.monotonic() < ends:
                    with contextlib.suppress(redis.RedisError):
                        for stream, entries in client.xread(last, block=500, count=1000) or []:
                            for entry_id, fields in entries:
                                stats.add(json.loads(fields[b"result"]))
                                last[stream.decode()] = entry_id
                    stack.supervisor.poll()
                    for service in stack.services:
                        service.poll()
                    if time.monotonic() >= gpu_at:
                        gpu, gpu_at = gpu_use(client), time.monotonic() + 2.0
                    live.update(
                        stats.table(
                            producer.queue_depth(model_id),
                            counters["sent"],
                            counters["refused"],
                            gpu,
                        )
                    )
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for th in threads:
                th.join(2)
            producer.close()
            client.close()
        print(
            f"sent {counters['sent']} frames, {stats.total} results "
            f"({', '.join(f'{k}={v}' for k, v in sorted(stats.by_status.items()))})"
        )
