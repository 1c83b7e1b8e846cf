"""``framepool up``'s supervisor and ``framepool scale`` with real processes and a real Redis.

- ``--workers-per-gpu 2`` on CPU: two pinned workers, both heartbeating;
- a worker SIGKILLed (its whole process group) comes back: new pid, heartbeating;
- ``framepool scale`` moves models between running workers while frames flow, and
  no frame is lost or answered twice;
- SIGTERM of ``framepool up`` drains: every accepted frame is answered or back in
  its queue at once (nothing waits in kombu's unacked hash for the visibility
  timeout), and a new worker answers the rest, each exactly once;
- a batch that outlives ``SHUTDOWN_GRACE_SECONDS`` is handed back too;
- a worker that exits at once every time (its only model cannot load: exit 4) is
  given up on: ``framepool up`` says so and exits 6.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from framepool import codec, keys
from framepool.redis_server import EmbeddedRedis
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from tests.faults import FIXTURE_ZOO, SLOW, Ledger, cmd_frame, wait_for
from workers.supervisor import EXIT_GAVE_UP

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
CPU1, CPU2 = f"cpu-1@{HOST}", f"cpu-2@{HOST}"
Q_SHAPE, Q_NOOP = keys.queue_name("shape_detector"), keys.queue_name("noop")


class Up:
    """``framepool up`` (no Flower, gateway or monitor) as a real process in its own session."""

    def __init__(self, tmp: Path, redis_url: str, *args: str, **env: str) -> None:
        self.data = tmp / "data"
        self.stdout_path, self.stderr_path = tmp / "up.out", tmp / "up.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "framepool.cli", "up", "--no-flower", "--no-gateway"]
                + ["--no-monitor", "--gpus", "none", *args],
                env={
                    **os.environ,
                    "REDIS_URL": redis_url,
                    "DATA_DIR": str(self.data),
                    "HEARTBEAT_INTERVAL_SECONDS": "1",
                    "LOG_FORMAT": "json",
                    "PYTHONUNBUFFERED": "1",
                    **env,
                },
                stdout=out,
                stderr=err,
                cwd=ROOT,
                start_new_session=True,
            )

    def worker_log(self, name: str) -> str:
        return (self.data / "logs" / f"{name.replace('@', '_')}.log").read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 90.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Last resort (a failed test): the launcher and every process it started."""
        for pid in [*_children(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # each child leads its own session
        self.proc.wait()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def heartbeat(client: redis.Redis, name: str) -> dict[str, Any] | None:
    raw = client.get(keys.worker_heartbeat(name))
    return json.loads(raw) if raw else None


def ready(client: redis.Redis, name: str, queues: list[str] | None = None) -> dict[str, Any]:
    hb = heartbeat(client, name)
    if not hb or hb["state"] != "ready" or hb.get("queues") is None:
        return {}
    if queues is not None and sorted(hb["queues"]) != sorted(queues):
        return {}
    return hb


def scale(redis_url: str, model: str, n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "framepool.cli", "scale", "--model", model, "--workers", str(n)],
        env={**os.environ, "REDIS_URL": redis_url, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def jpeg() -> bytes:
    return codec.encode_jpeg(SyntheticCamera("scale", 640, 480, fps=10, seed=3).frame(0).image)


@dataclass
class Stack:
    up: Up
    redis_url: str
    client: redis.Redis


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One ``framepool up --workers-per-gpu 2 --models shape_detector,noop`` on CPU."""
    tmp = tmp_path_factory.mktemp("up")
    server = EmbeddedRedis(tmp / "redis", password="scale-secret").start()
    up = Up(tmp, server.url, "--workers-per-gpu", "2", "--models", "shape_detector,noop")
    client = redis.Redis.from_url(server.url)
    try:
        wait_for(lambda: ready(client, CPU1) and ready(client, CPU2), timeout=120)
        yield Stack(up, server.url, client)
    finally:
        if up.proc.poll() is None:
            up.stop()
        client.close()
        server.stop()


def test_two_workers_per_gpu_on_cpu_both_heartbeat_pinned(stack: Stack) -> None:
    beats = [ready(stack.client, n, [Q_NOOP, Q_SHAPE]) for n in (CPU1, CPU2)]
    assert all(beats), beats
    assert beats[0]["pid"] != beats[1]["pid"]
    for hb in beats:
        assert hb["device"] == "cpu" and hb["hostname"] == HOST
        assert set(hb["models"]) == {"shape_detector", "noop"}
        # pinned before Python started: no GPU visible to the worker at all
        environ = Path(f"/proc/{hb['pid']}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=" in environ


def test_a_killed_worker_is_restarted(stack: Stack) -> None:
    old, other = heartbeat(stack.client, CPU1), heartbeat(stack.client, CPU2)
    assert old and other
    os.killpg(old["pid"], signal.SIGKILL)
    back = wait_for(
        lambda: (hb := ready(stack.client, CPU1)) and hb["pid"] != old["pid"] and hb, timeout=90
    )
    assert back["pid"] != old["pid"]
    assert stack.up.proc.poll() is None  # the supervisor kept running
    assert heartbeat(stack.client, CPU2)["pid"] == other["pid"]  # the other one untouched
    assert "worker_exited" in stack.up.stdout_path.read_text(errors="replace")


def test_scale_moves_models_between_running_workers_and_loses_nothing(stack: Stack) -> None:
    wait_for(lambda: ready(stack.client, CPU1, [Q_NOOP, Q_SHAPE]), timeout=90)
    wait_for(lambda: ready(stack.client, CPU2, [Q_NOOP, Q_SHAPE]), timeout=90)
    frame = jpeg()
    settings = Settings(redis_url=stack.redis_url)
    with FrameProducer(settings) as producer:
        ledger = Ledger(producer)
        stop = threading.Event()
        marks: dict[str, int] = {}

        def send() -> None:
            seq = 0
            while not stop.is_set():
                for model in ("shape_detector", "noop"):
                    ledger.send(model, frame, camera_id=f"scale-{model}", seq=seq)
                seq += 1
                stop.wait(0.1)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            # noop to one worker: the one consuming the most queues, last by name
            moved = scale(stack.redis_url, "noop", 1)
            assert moved.returncode == 0, moved.stderr
            assert f"- {CPU2}" in moved.stdout and "noop: 2 -> 1" in moved.stdout
            wait_for(lambda: ready(stack.client, CPU2, [Q_SHAPE]), timeout=30)
            # shape_detector to one worker: now cpu-1 consumes more, so it gives it up
            moved = scale(stack.redis_url, "shape_detector", 1)
            assert moved.returncode == 0, moved.stderr
            assert f"- {CPU1}" in moved.stdout
            wait_for(lambda: ready(stack.client, CPU1, [Q_NOOP]), timeout=30)
            marks["split"] = len(ledger.sent)
            time.sleep(2.0)  # frames flow to one dedicated worker per model
            marks["split_end"] = len(ledger.sent)
            # three asked, two have it loaded: cpu-1 takes it again, and the CLI says why not 3
            short = scale(stack.redis_url, "shape_detector", 3)
            assert short.returncode == 3, short.stdout + short.stderr
            assert f"+ {CPU1}" in short.stdout and "only 2 live worker(s)" in short.stderr
            wait_for(lambda: ready(stack.client, CPU1, [Q_NOOP, Q_SHAPE]), timeout=30)
            marks["both"] = len(ledger.sent)
            time.sleep(2.0)
        finally:
            stop.set()
            sender.join(10)
        results = ledger.collect(timeout=90)
        assert not ledger.lost, f"{len(ledger.lost)} of {len(ledger.sent)} frames lost"
        assert set(ledger.statuses()) == {"ok"}
        counts = ledger.stream_counts(stack.client, ["scale-shape_detector", "scale-noop"])
        assert all(counts[j] == 1 for j in ledger.sent), "a frame answered twice"
    jobs = list(ledger.sent)
    served = {
        (results[j].model_id, results[j].worker) for j in jobs[marks["split"] : marks["split_end"]]
    }
    assert served == {("shape_detector", CPU2), ("noop", CPU1)}
    again = {results[j].worker for j in jobs[marks["both"] :] if results[j].model_id == "noop"}
    assert again == {CPU1}  # noop stayed on cpu-1
    shape_again = [results[j].worker for j in jobs[marks["both"] :]]
    assert CPU1 in shape_again  # shape_detector is back on cpu-1 too


def test_sigterm_drains_every_accepted_frame_is_answered_once(
    redis_url: str, tmp_path: Path, start_worker
) -> None:
    zoo = {"MODELS_ROOT": str(FIXTURE_ZOO), "MAX_BATCH_SIZE": "2"}
    up = Up(tmp_path, redis_url, "--models", "faulty", WORKER_CONCURRENCY="4", **zoo)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: ready(client, CPU1), timeout=90)
        settings = Settings(redis_url=redis_url, models_root=FIXTURE_ZOO)
        with FrameProducer(settings) as producer:
            ledger = Ledger(producer)
            for seq in range(24):  # 0.2 s each in the model, batches of 2
                ledger.send("faulty", cmd_frame(SLOW, 20), camera_id="drain", seq=seq)
            wait_for(lambda: client.xlen(keys.result_stream("drain")) >= 2, timeout=30)
            assert up.stop() == 0
            # right after `up` exits: every frame answered or back in its queue
            answered = client.xlen(keys.result_stream("drain"))
            queued = sum(client.llen(q) for q in keys.queue_lists("faulty"))
            assert client.hlen("unacked") == 0, "frames left waiting for the visibility timeout"
            assert answered + queued == 24 and queued > 0
            assert "worker_draining" in up.worker_log(CPU1)
            start_worker(["faulty"], **zoo)
            ledger.collect(timeout=60)
            assert not ledger.lost
            assert set(ledger.statuses()) == {"ok"}
            assert set(ledger.stream_counts(client, ["drain"]).values()) == {1}
    finally:
        if up.proc.poll() is None:
            up.kill()
        client.close()


def test_frames_not_started_go_back_at_once_and_a_batch_past_the_grace_too(
    redis_url: str, tmp_path: Path, start_worker
) -> None:
    zoo = {"MODELS_ROOT": str(FIXTURE_ZOO), "MAX_BATCH_SIZE": "1"}
    slow = start_worker(
        ["faulty"], extra=["--concurrency", "3"], SHUTDOWN_GRACE_SECONDS="1.5", **zoo
    )
    client = redis.Redis.from_url(redis_url)

    def queued() -> int:
        return sum(client.llen(q) for q in keys.queue_lists("faulty"))

    settings = Settings(redis_url=redis_url, models_root=FIXTURE_ZOO)
    with FrameProducer(settings) as producer:
        ledger = Ledger(producer)
        for seq in range(3):  # one runs (2 s, past the grace), two wait behind it
            ledger.send("faulty", cmd_frame(SLOW, 200), camera_id="grace", seq=seq)
        wait_for(lambda: client.hlen("unacked") == 3, timeout=30)
        time.sleep(0.3)  # the first one is in the model now
        os.killpg(slow.proc.pid, signal.SIGTERM)
        # while its batch still runs, the two frames it had not started are back already
        wait_for(lambda: queued() == 2 and client.hlen("unacked") == 1, timeout=5, every=0.02)
        assert slow.proc.poll() is None
        assert slow.stop() == 0
        # the grace ended before the batch did: that frame is back too, nothing waits
        assert client.hlen("unacked") == 0
        assert queued() == 3 and client.xlen(keys.result_stream("grace")) == 0
        text = slow.log_path.read_text()
        assert '"handed_back": 2' in text and "drain_grace_expired" in text
        start_worker(["faulty"], **zoo)
        ledger.collect(timeout=60)
        assert not ledger.lost and set(ledger.statuses()) == {"ok"}
        assert set(ledger.stream_counts(client, ["grace"]).values()) == {1}
    client.close()


def test_a_worker_that_keeps_exiting_is_given_up_on(redis_url: str, tmp_path: Path) -> None:
    up = Up(
        tmp_path,
        redis_url,
        "--models",
        "broken",  # load() raises: the worker exits 4 at once, every time
        MODELS_ROOT=str(FIXTURE_ZOO),
        WORKER_MAX_RESTARTS="1",
        WORKER_RESTART_BACKOFF_SECONDS="0.1",
    )
    try:
        code = up.wait(timeout=90)
    finally:
        if up.proc.poll() is None:
            up.kill()
    err = up.stderr()
    assert code == EXIT_GAVE_UP == 6, err
    assert f"worker {CPU1} exited 2 times" in err
    assert "exit 4 (no model could be loaded): giving up" in err
    assert "broken on purpose" in err  # the tail of the worker's own log
    assert "framepool up: stopped (exit 6)" in err
