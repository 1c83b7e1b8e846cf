"""``framepool bench monitor``: the monitor service at scale (see docs/benchmarks.md).

A private ``redis-server`` (as ``framepool up`` starts it) holds the heartbeats of a
simulated cluster (:mod:`benchmarks.monitor_cluster`: 2 hosts x 4 GPUs x 4 workers,
5 models each, 100 kernel rows and every histogram per model, written by the
workers' own ``Heartbeat``: kernel tables under a key of their own) and real queued
frames (``FrameProducer``). Heartbeats are rewritten as real workers rewrite them:
each worker every ``HEARTBEAT_INTERVAL_SECONDS`` (5 s), staggered. Three figures:

- (a) ``ClusterReader.read()`` in this process, 1 s of heartbeat rewrites between reads;
- (b) ``GET /metrics`` through the real FastAPI app (``create_app(poll=False)``,
  Starlette's ``TestClient``), a fresh snapshot (``refresh()``) before each scrape,
  as Prometheus sees one every 15 s; and the output's size;
- (c) CPU of the monitor process per second of wall time: ``python -m
  benchmarks.monitor_serve`` (the real app under uvicorn, its real poll loop)
  scraped every 15 s over HTTP, split into poll, WebSocket message, scrapes and
  the rest; beside it, the same process with one dashboard WebSocket client,
  and one over an empty Redis database (the baseline: a monitor with no workers).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.harness import (
    machine_busy_s,
    machine_info,
    median,
    save_report,
    test_frames,
    utc_minute,
)
from benchmarks.monitor_cluster import FakeCluster
from benchmarks.monitor_report import DOCS, build_figures, print_summary, update_docs
from benchmarks.monitor_serve import CPU_PATH
from benchmarks.sandbox import Sandbox
from framepool import keys
from framepool.log import configure_logging
from framepool.redis_server import free_port
from framepool.settings import Settings
from monitoring.app import configure_gc

SCRAPE_INTERVAL_S = 15.0
QUEUED_PER_MODEL = 20
MONITORS = ("cluster", "cluster_ws", "idle")


def _log(msg: str) -> None:
    print(f"[bench monitor] {msg}", file=sys.stderr, flush=True)


class Beats:
    """Rewrites heartbeats on the workers' schedule: worker ``i`` at ``i * interval / n`` + k * interval."""

    def __init__(self, cluster: FakeCluster, client: redis.Redis) -> None:
        self.cluster, self.client = cluster, client
        self.next = 0
        self.bytes = 0

    def rewrite(self, count: int) -> None:
        for _ in range(count):
            w = self.cluster.workers[self.next % len(self.cluster.workers)]
            self.cluster.advance(w)
            self.bytes = self.cluster.publish(self.client, w)
            self.next += 1

    def per_second(self) -> int:
        """Rewrites in one second of the real schedule (rounded up)."""
        n = len(self.cluster.workers)
        return -(-n // max(1, round(self.cluster.interval_s)))

    def per_scrape(self) -> int:
        """Rewrites between two scrapes that matter: every worker once (the last one counts)."""
        if self.cluster.interval_s <= SCRAPE_INTERVAL_S:
            return len(self.cluster.workers)
        return round(self.per_second() * SCRAPE_INTERVAL_S)


def seed_queues(url: str, model_ids: list[str], per_model: int) -> int:
    """``per_model`` real framepool messages (640x480 JPEG) waiting in each model's queue."""
    from producer import FrameProducer

    frames = test_frames(4)
    items = [
        {"model_id": m, "frame": frames[i % len(frames)], "camera_id": "bench", "seq": i}
        for m in model_ids
        for i in range(per_model)
    ]
    with FrameProducer(Settings(redis_url=url)) as producer:
        producer.submit_many(items)
    return len(items)


# ---------------------------------------------------------------- (a) and (b)
def measure_read(beats: Beats, settings: Settings, reads: int) -> dict[str, Any]:
    from monitoring.cluster import ClusterReader

    reader = ClusterReader(beats.client, settings)
    t0, c0 = time.perf_counter(), time.process_time()
    reader.read()
    cold = ((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000)
    wall, cpu = [], []
    for _ in range(reads):
        beats.rewrite(beats.per_second())
        t0, c0 = time.perf_counter(), time.process_time()
        reader.read()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"cold_ms": cold[0], "cold_cpu_ms": cold[1], "runs_ms": wall, "cpu_ms": cpu}


def measure_render(beats: Beats, settings: Settings, scrapes: int) -> dict[str, Any]:
    with warnings.catch_warnings():  # Starlette's note on its httpx dependency
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from monitoring.app import create_app

    app = create_app(settings, poll=False)
    state = app.state.monitor
    fresh, again = [], []
    body = b""
    with TestClient(app) as client:
        state.refresh()
        client.get("/metrics")  # imports, first-call caches
        for _ in range(scrapes):
            beats.rewrite(beats.per_scrape())  # 15 s of heartbeats: every worker's is new
            state.refresh()
            t0 = time.perf_counter()
            response = client.get("/metrics")
            fresh.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            client.get("/metrics")
            again.append((time.perf_counter() - t0) * 1000)
            body = response.content
    text = body.decode()
    samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return {
        "runs_ms": fresh,
        "same_snapshot_ms": again,
        "bytes": len(body),
        "lines": text.count("\n"),
        "samples": len(samples),
        "families": text.count("# TYPE "),
        "worker_label_samples": sum(1 for ln in samples if 'worker="' in ln),
    }


# ---------------------------------------------------------------------- (c)
class _WsReader:
    """One dashboard: reads every message of ``WS /api/v1/gpu/stream`` in a thread."""

    def __init__(self, url: str) -> None:
        self.url, self.messages, self.bytes = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from websockets.sync.client import connect

        with contextlib.suppress(Exception), connect(self.url, max_size=None) as ws:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    text = ws.recv(timeout=0.5)
                    self.messages += 1
                    self.bytes += len(text)

    def __enter__(self) -> _WsReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _cpu(http: httpx.Client, port: int) -> dict[str, float]:
    return dict(http.get(f"http://127.0.0.1:{port}{CPU_PATH}").json())


@contextlib.contextmanager
def monitors(sb: Sandbox, url: str) -> Iterator[dict[str, int]]:
    """The three monitor processes (``MONITORS``), ready; their ports."""
    ports = {name: free_port() for name in MONITORS}
    idle_url = url.rsplit("/", 1)[0] + "/1"  # an empty database: no workers, no queues
    children = []
    for name, port in ports.items():
        env = {"REDIS_URL": idle_url if name == "idle" else url, "MONITOR_PORT": str(port),
               "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json"}  # fmt: skip
        children.append(
            sb.spawn(f"monitor-{name}", [sys.executable, "-m", "benchmarks.monitor_serve"], env)
        )

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return all(
                httpx.get(f"http://127.0.0.1:{p}/ready").status_code == 200 for p in ports.values()
            )
        return False

    sb.wait_until(ready, 60, "the monitors to answer /ready", watch=children)
    yield ports


def _window(
    start: dict[str, float], stop: dict[str, float], wall: float, scrape_s: float, scrapes: int,
    overhead_s: float,
) -> dict[str, Any]:  # fmt: skip
    """One monitor over one window: its CPU % of a core, and where it went."""
    total = stop["process_s"] - start["process_s"] - overhead_s
    parts = {
        "poll": stop["poll_s"] - start["poll_s"],
        "stream": stop["stream_s"] - start["stream_s"],
        "scrape": scrape_s,
    }
    parts["other"] = total - sum(parts.values())
    polls = int(stop["polls"] - start["polls"])
    return {
        "wall_s": round(wall, 3),
        "cpu_percent": round(100 * total / wall, 4),
        "parts_percent": {k: round(100 * v / wall, 4) for k, v in parts.items()},
        "gc_percent": round(100 * (stop["gc_s"] - start["gc_s"]) / wall, 4),
        "polls": polls,
        "poll_ms_each": round(1000 * parts["poll"] / max(1, polls), 3),
        "scrapes": scrapes,
        "scrape_cpu_ms_each": round(1000 * scrape_s / scrapes, 3) if scrapes else None,
    }


def measure_cpu(
    sb: Sandbox, beats: Beats, duration: float, repeats: int, warmup: float = 10.0
) -> dict[str, Any]:
    """``repeats`` windows of ``duration`` s: every monitor's CPU split by where it went."""
    interval = beats.cluster.interval_s / len(beats.cluster.workers)
    out: dict[str, Any] = {name: [] for name in MONITORS}
    out["machine_busy_cpus"], scrape_ms = [], []
    with monitors(sb, sb.redis_url) as ports, httpx.Client(timeout=30) as http:
        ws = _WsReader(f"ws://127.0.0.1:{ports['cluster_ws']}/api/v1/gpu/stream")
        with ws:
            # the cost of one /_bench/cpu call, taken out of "other"
            probe = {n: [_cpu(http, p)["process_s"] for _ in range(11)] for n, p in ports.items()}
            call_s = {n: median(b - a for a, b in zip(v, v[1:], strict=False)) for n, v in probe.items()}  # fmt: skip
            clock = time.monotonic()
            next_beat, next_scrape = clock, clock + warmup + SCRAPE_INTERVAL_S / 2
            for r in range(-1, repeats):  # r = -1: the warm-up, not recorded
                end = time.monotonic() + (warmup if r < 0 else duration)
                start = {n: _cpu(http, p) for n, p in ports.items()}
                busy0, wall0, ws0 = machine_busy_s(), time.monotonic(), ws.messages
                scrape = {n: 0.0 for n in MONITORS}
                scrapes = 0
                while (now := time.monotonic()) < end:
                    if now >= next_beat:
                        beats.rewrite(1)
                        next_beat += interval
                    if now >= next_scrape:
                        for n, p in ports.items():
                            pre = _cpu(http, p)
                            t0 = time.perf_counter()
                            http.get(f"http://127.0.0.1:{p}/metrics").raise_for_status()
                            if n == "cluster":
                                scrape_ms.append((time.perf_counter() - t0) * 1000)
                            post = _cpu(http, p)
                            inner = sum(post[k] - pre[k] for k in ("poll_s", "stream_s"))
                            scrape[n] += post["process_s"] - pre["process_s"] - inner - call_s[n]
                        scrapes += 1
                        next_scrape += SCRAPE_INTERVAL_S
                    time.sleep(max(0.0, min(next_beat, next_scrape, end) - time.monotonic()))
                stop = {n: _cpu(http, p) for n, p in ports.items()}
                wall = time.monotonic() - wall0
                if r < 0:
                    continue
                for n in MONITORS:
                    calls = 2 * scrapes + 1  # the /_bench/cpu calls counted in this window
                    out[n].append(
                        _window(start[n], stop[n], wall, scrape[n], scrapes, calls * call_s[n])
                    )
                out["machine_busy_cpus"].append(round((machine_busy_s() - busy0) / wall, 3))
                out["ws_messages_per_s"] = round((ws.messages - ws0) / wall, 2)
                _log(f"(c) window {r + 1}/{repeats}: " + ", ".join(
                    f"{n} {out[n][-1]['cpu_percent']:.2f}%" for n in MONITORS))  # fmt: skip
    out["scrape_ms"] = scrape_ms
    out["ws_message_bytes"] = round(ws.bytes / ws.messages) if ws.messages else None
    return out


# ------------------------------------------------------------------ entry point
def main(duration: float, repeats: int, reads: int, out: Path, started: float) -> int:
    command = f"framepool bench monitor --duration {duration:g} --repeats {repeats} --reads {reads}"
    info = machine_info()
    configure_logging(Settings(log_level="WARNING", log_format="console"))
    cluster = FakeCluster()
    _log(f"{command}: {len(cluster.workers)} workers x {len(cluster.model_ids)} models")
    try:
        with Sandbox() as sb:
            client = redis.Redis.from_url(sb.redis_url)
            written = cluster.publish_all(client)
            queued = seed_queues(sb.redis_url, cluster.model_ids, QUEUED_PER_MODEL)
            beats = Beats(cluster, client)
            settings = Settings(redis_url=sb.redis_url, log_level="WARNING")
            configure_gc()  # as `framepool monitor` does: (a) and (b) run in this process
            _log(f"{written / 1e6:.1f} MB of heartbeats, {queued} queued frames; (a) read()")
            read = measure_read(beats, settings, reads)
            _log("(b) GET /metrics")
            render = measure_render(beats, settings, max(5, reads // 2))
            _log(f"(c) CPU: {repeats} x {duration:g} s, scrape every {SCRAPE_INTERVAL_S:g} s")
            cpu = measure_cpu(sb, beats, duration, repeats)
            depth = sum(int(client.llen(keys.queue_name(m))) for m in cluster.model_ids)
    except KeyboardInterrupt:
        print("interrupted: monitors and Redis stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "workers": len(cluster.workers),
            "gpus": len({(w.hostname, w.uuid) for w in cluster.workers}),
            "hosts": len({w.hostname for w in cluster.workers}),
            "models_per_worker": len(cluster.model_ids),
            "kernels_per_model": len(cluster.workers[0].models[cluster.model_ids[0]].kernel_names),
            "heartbeat_bytes": beats.bytes,
            "kernel_table_bytes": max(
                (w.writer.kernels_size for w in cluster.workers if w.writer), default=0
            ),
            "heartbeat_interval_s": cluster.interval_s,
            "queued_frames": queued,
            "queued_at_end": depth,
            "poll_interval_s": settings.monitor_poll_interval_seconds,
            "idle_poll_interval_s": settings.monitor_idle_poll_interval_seconds,
            "scrape_interval_s": SCRAPE_INTERVAL_S,
            "duration_s": duration,
            "repeats": repeats,
            "reads": reads,
        },
        "details": {"read": read, "render": render, "cpu": cpu},
        "runtime_s": round(time.time() - started, 1),
    }
    report["figures"] = build_figures(report)
    return save_report(report, out, DOCS, update_docs, print_summary)
