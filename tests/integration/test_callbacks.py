"""Webhooks end to end: a real frame worker, a real ``framepool callbacks`` process,
a real Redis and a real HTTP receiver on loopback.

- a receiver that fails twice then accepts gets exactly one accepted delivery,
  signed over its body, carrying the frame's correlation and job ids;
- a receiver that always fails gets the delivery dead-lettered after the last
  retry: counted, listed by ``framepool dead-letters --json`` (URL masked), and
  delivered once requeued with ``--requeue``;
- the frame worker does not wait for webhooks: with every receiver request held
  open, all frame results arrive, and only afterwards do dead letters appear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from framepool import codec, keys
from framepool.schemas import InferenceResult
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from tests.faults import wait_for
from tests.services import run_cli

MODEL = "shape_detector"
SECRET = "integration-callback-secret"
ROOT = Path(__file__).resolve().parents[2]
FAST_RETRIES = {"CALLBACK_BACKOFF_SECONDS": "0.05", "CALLBACK_MAX_RETRIES": "2"}


# ------------------------------------------------------------------ the receiver
class Receiver:
    """A webhook receiver on 127.0.0.1: ``respond(n)`` gives the status of the n-th request
    (1-based); with ``hold`` set, every request waits for ``release`` before answering."""

    def __init__(self, respond: Callable[[int], int], hold: bool = False) -> None:
        self.respond = respond
        self.requests: list[tuple[dict[str, str], bytes, int]] = []  # headers, body, status
        self.arrived = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.arrived += 1
                    n = receiver.arrived
                receiver.release.wait(60)
                status = receiver.respond(n)
                with receiver._lock:
                    receiver.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[tuple[dict[str, str], bytes, int]]:
        with self._lock:
            return [r for r in self.requests if 200 <= r[2] < 300]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def _make(respond: Callable[[int], int], hold: bool = False) -> Receiver:
        r = Receiver(respond, hold)
        made.append(r)
        return r

    yield _make
    for r in made:
        r.close()


# ------------------------------------------------------------------ framepool callbacks
class CallbacksProcess:
    """``framepool callbacks`` as a real child process, ready once it logged callbacks_ready."""

    def __init__(self, env: dict[str, str], log_path: Path, timeout: float = 60.0) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framepool.cli", "callbacks", "--concurrency", "16"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while b"callbacks_ready" not in log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"framepool callbacks did not start: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture()
def start_callbacks(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., CallbacksProcess]]:
    started: list[CallbacksProcess] = []

    def _start(**env: str) -> CallbacksProcess:
        full = {
            **os.environ,
            "REDIS_URL": redis_url,
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "CALLBACK_SECRET": SECRET,
            **env,
        }
        p = CallbacksProcess(full, tmp_path / f"callbacks-{len(started)}.log")
        started.append(p)
        return p

    yield _start
    for p in started:
        p.stop()


# ------------------------------------------------------------------ helpers
def jpeg(seq: int = 0) -> bytes:
    return codec.encode_jpeg(SyntheticCamera("cam1", 320, 240, seed=5).frame(seq).image)


def stats(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.CALLBACK_STATS).items()}


def valid_signature(headers: dict[str, str], body: bytes) -> bool:
    ts = headers["X-Framepool-Timestamp"]
    mac = hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Framepool-Signature"], f"sha256={mac}")


def cli(*args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"REDIS_URL": redis_url, "COLUMNS": "300"}, timeout=60)


# ------------------------------------------------------------------ tests
def test_a_receiver_that_fails_twice_gets_exactly_one_signed_delivery(
    settings: Settings, redis_url: str, start_worker, start_callbacks, receivers
) -> None:
    start_worker([MODEL])
    start_callbacks(**FAST_RETRIES)
    receiver = receivers(lambda n: 500 if n <= 2 else 204)
    client = redis.Redis.from_url(redis_url)
    with FrameProducer(settings) as producer:
        h = producer.submit(MODEL, jpeg(), camera_id="cam1", seq=7, callback_url=receiver.url)
        result = h.get(timeout=60)
    assert result.ok

    wait_for(lambda: stats(client).get("delivered"), "the delivery")
    assert stats(client) == {"failed": 2, "retried": 2, "delivered": 1}
    assert [r[2] for r in receiver.requests] == [500, 500, 204]
    assert [r[0]["X-Framepool-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    [(headers, body, _)] = receiver.accepted()
    assert valid_signature(headers, body)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Correlation-ID"] == h.correlation_id
    assert headers["X-Framepool-Job-ID"] == h.job_id
    assert InferenceResult.model_validate_json(body) == result  # the result, as stored
    assert client.llen(keys.DEAD_LETTERS) == 0


def test_a_receiver_that_always_fails_gets_a_dead_letter_that_can_be_requeued(
    settings: Settings, redis_url: str, start_worker, start_callbacks, receivers
) -> None:
    start_worker([MODEL])
    callbacks = start_callbacks(LOG_LEVEL="DEBUG", **FAST_RETRIES)  # every Celery line too
    healthy = threading.Event()  # the receiver recovers only for the requeue
    receiver = receivers(lambda n: 204 if healthy.is_set() else 500)
    client = redis.Redis.from_url(redis_url)
    url = f"{receiver.url}?token=hook-query-secret"
    with FrameProducer(settings) as producer:
        h = producer.submit(MODEL, jpeg(), camera_id="cam1", callback_url=url)
        assert h.get(timeout=60).ok

    wait_for(lambda: client.llen(keys.DEAD_LETTERS), "the dead letter")
    assert len(receiver.requests) == 3  # the first attempt and CALLBACK_MAX_RETRIES=2 retries
    dropped = client.hget(keys.dropped_counter(MODEL), "callback_dead_lettered")
    assert dropped == b"1"
    assert stats(client) == {"failed": 3, "retried": 2, "dead_lettered": 1}

    out = cli("dead-letters", "--json", redis_url=redis_url)
    assert out.returncode == 0, out.stderr
    [letter] = [json.loads(line) for line in out.stdout.splitlines()]
    assert letter["kind"] == "callback" and letter["reason"] == "HTTP 500"
    assert (letter["job_id"], letter["correlation_id"]) == (h.job_id, h.correlation_id)
    assert (letter["model_id"], letter["camera_id"], letter["attempts"]) == (MODEL, "cam1", 3)
    assert letter["url"] == f"{receiver.url}?token=***" and "payload" not in letter
    assert "hook-query-secret" not in out.stdout
    assert "hook-query-secret" not in callbacks.log_tail(200)
    assert SECRET not in callbacks.log_tail(200)
    assert cli("dead-letters", "--kind", "frame", "--json", redis_url=redis_url).stdout == ""
    table = cli("dead-letters", "--kind", "callback", redis_url=redis_url).stdout
    assert "1 shown, 1 stored" in table and h.job_id in table and "HTTP 500" in table
    assert "hook-query-secret" not in table

    healthy.set()
    out = cli("dead-letters", "--requeue", "--json", redis_url=redis_url)
    assert json.loads(out.stdout) == {"requeued": 1, "skipped": {}}
    [(headers, body, _)] = wait_for(receiver.accepted, "the requeued delivery")
    assert headers["X-Framepool-Job-ID"] == h.job_id and valid_signature(headers, body)
    assert client.llen(keys.DEAD_LETTERS) == 0


def test_frame_results_do_not_wait_for_webhooks(
    settings: Settings, redis_url: str, start_worker, start_callbacks, receivers
) -> None:
    frames = 8
    start_worker([MODEL])
    start_callbacks(CALLBACK_BACKOFF_SECONDS="0.05", CALLBACK_MAX_RETRIES="1",
                    CALLBACK_TIMEOUT_SECONDS="60")  # fmt: skip
    receiver = receivers(lambda n: 500, hold=True)  # every request held open until released
    client = redis.Redis.from_url(redis_url)
    items = [
        {
            "model_id": MODEL,
            "frame": jpeg(i),
            "camera_id": "cam1",
            "seq": i,
            "callback_url": receiver.url,
        }  # fmt: skip
        for i in range(frames)
    ]
    with FrameProducer(settings) as producer:
        handles = producer.submit_many(items)
        results = [h.get(timeout=60) for h in handles]
    # Every result is in while no webhook request has been answered: the worker did not wait.
    assert all(r.ok for r in results) and len(results) == frames
    assert receiver.requests == [] and client.llen(keys.DEAD_LETTERS) == 0
    # ... and the webhooks were really under way, all at once, while the results came back.
    wait_for(lambda: receiver.arrived >= frames, "every webhook request to arrive")
    assert receiver.requests == []
    receiver.release.set()
    wait_for(lambda: client.llen(keys.DEAD_LETTERS) == frames, "the dead letters")
    letters = [json.loads(raw) for raw in client.lrange(keys.DEAD_LETTERS, 0, -1)]
    assert {e["job_id"] for e in letters} == {h.job_id for h in handles}
    assert all(e["attempts"] == 2 for e in letters)
