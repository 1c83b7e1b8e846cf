"""The fault matrix's Redis rows (../shared/design/reliability.md): a real
redis-server of the test's own, killed and restarted, or paused, under a real
worker, the monitor and a producer."""

from __future__ import annotations

import os
import signal
import time

import httpx
import redis

from framepool.errors import BrokerUnavailable
from framepool.redis_server import EmbeddedRedis
from framepool.settings import Settings
from producer import FrameProducer
from tests.conftest import WorkerProcess
from tests.faults import FIXTURE_ZOO, OK, SLOW, Ledger, cmd_frame, record, wait_for, worker_env
from tests.services import ServiceProcess


def _own_redis(tmp_path) -> EmbeddedRedis:  # type: ignore[no-untyped-def]
    return EmbeddedRedis(tmp_path / "redis-own", password="fault-row-pw").start()


def test_redis_killed_and_restarted_loses_no_accepted_frame(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Row 6: SIGKILL redis-server (AOF everysec) mid-stream, restart it on the same port.

    Every frame accepted before the kill is answered, and the worker, the monitor
    and the producer carry on without being restarted.
    """
    server = _own_redis(tmp_path)
    url = server.url
    s = Settings(redis_url=url, models_root=FIXTURE_ZOO, data_dir=tmp_path / "data")
    env = {**os.environ, "REDIS_URL": url, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
           **worker_env()}  # fmt: skip
    worker = WorkerProcess(env, ["faulty"], tmp_path / "worker.log")
    monitor = None
    try:
        worker.wait_ready(url)
        monitor = ServiceProcess("monitor", {"REDIS_URL": url}, tmp_path / "monitor.log",
                                 ready_path="/metrics")  # fmt: skip
        with FrameProducer(s) as p:
            ledger = Ledger(p)
            for seq in range(20):
                ledger.send("faulty", cmd_frame(SLOW, 10), camera_id="k6", seq=seq)
            time.sleep(0.5)
            server.kill()
            time.sleep(1.0)
            server.start()
            restarted = time.monotonic()
            for seq in range(20, 30):  # the same producer object, after the restart
                ledger.send("faulty", cmd_frame(OK), camera_id="k6", seq=seq)
            ledger.collect(timeout=90)
            recovered_s = time.monotonic() - restarted
        client = redis.Redis.from_url(url)
        assert ledger.lost == [], ledger.diagnose(client, "faulty")
        assert ledger.statuses() == {"ok": 30}
        assert set(ledger.stream_counts(client, ["k6"]).values()) == {1}
        assert worker.proc.poll() is None  # the same worker process reconnected

        def monitor_sees_worker() -> bool:
            r = httpx.get(f"{monitor.url}/api/v1/workers", timeout=5)
            return r.status_code == 200 and len(r.json().get("workers", [])) == 1

        assert wait_for(monitor_sees_worker, timeout=30)
        record(6, "Redis SIGKILL and restart (AOF everysec)", **ledger.figures(client, ["k6"]),
               recovery_s=round(recovered_s, 1), worker_restarted=False)  # fmt: skip
    finally:
        if monitor is not None:
            monitor.stop()
        worker.stop()
        server.stop()


def test_redis_paused_while_producing_nothing_hangs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Row 7: redis-server paused (SIGSTOP) for 5 s while a producer submits.

    Each submit either returns a handle or raises ``BrokerUnavailable`` within
    its socket timeout; nothing blocks for long, and every accepted frame is
    answered once Redis is back.
    """
    server = _own_redis(tmp_path)
    url = server.url
    s = Settings(redis_url=url, models_root=FIXTURE_ZOO, data_dir=tmp_path / "data")
    env = {**os.environ, "REDIS_URL": url, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
           **worker_env()}  # fmt: skip
    worker = WorkerProcess(env, ["faulty"], tmp_path / "worker.log")
    try:
        worker.wait_ready(url)
        assert server.proc is not None
        with FrameProducer(s) as p:
            ledger = Ledger(p)
            refused = 0
            longest = 0.0
            paused_at = time.monotonic()
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                seq = 0
                while time.monotonic() - paused_at < 5.0:
                    began = time.monotonic()
                    try:
                        ledger.send("faulty", cmd_frame(OK), camera_id="k7", seq=seq)
                    except BrokerUnavailable:
                        refused += 1
                    longest = max(longest, time.monotonic() - began)
                    seq += 1
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            for n in range(seq, seq + 10):
                ledger.send("faulty", cmd_frame(OK), camera_id="k7", seq=n)
            ledger.collect(timeout=60)
        assert refused >= 1  # it said so
        assert longest < 30  # a hang would be forever; the socket timeouts are 5-10 s
        assert ledger.lost == [], ledger.diagnose(redis.Redis.from_url(url), "faulty")
        assert set(ledger.statuses()) == {"ok"}
        client = redis.Redis.from_url(url)
        record(7, "Redis paused 5 s while producing", **ledger.figures(client, ["k7"]),
               refused_while_away=refused, longest_submit_s=round(longest, 1))  # fmt: skip
    finally:
        worker.stop()
        server.stop()
