"""``framepool up``: Redis (embedded if needed) plus supervised worker processes.

Like the CLI, this launcher reaches into ``workers`` (for the supervisor) at
call time; the rest of the core imports no other package.
"""

from __future__ import annotations

import signal
import socket
import time
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from framepool import keys
from framepool.log import get_logger
from framepool.redis_server import EmbeddedRedis, ensure_redis
from framepool.settings import Settings

log = get_logger(__name__)


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f":***@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Stack:
    def __init__(
        self, settings: Settings, *, gpus: str, workers_per_gpu: int, models: list[str]
    ) -> None:
        from workers.supervisor import plan_workers

        self.settings = settings
        self.specs = plan_workers(gpus, workers_per_gpu, models, socket.gethostname())
        self.models = models
        self.redis_url = settings.redis_url
        self.embedded: EmbeddedRedis | None = None
        self.supervisor: Any = None
        self._stop = False

    def __enter__(self) -> Stack:
        from workers.supervisor import Supervisor

        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.redis_url, self.embedded = ensure_redis(self.settings.redis_url, data_dir)
        if self.embedded is not None:  # ours alone: forget what earlier runs registered
            redis.Redis.from_url(self.redis_url).delete(keys.SERVED_MODELS)
        env = {"REDIS_URL": self.redis_url, "LOG_FORMAT": "json"}
        self.supervisor = Supervisor(self.specs, env=env, log_dir=str(data_dir / "logs"))
        self.supervisor.start()
        signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def print_urls(self) -> None:
        print(f"redis    {mask_url(self.redis_url)}" + ("  (embedded)" if self.embedded else ""))
        for spec in self.specs:
            print(f"worker   {spec.name}  device={spec.device}  models={','.join(spec.models)}")
        print(f"logs     {self.settings.data_dir / 'logs'}")

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until every model is registered as served by some worker."""
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not self._stop:
                served = {m.decode() for m in client.smembers(keys.SERVED_MODELS)}
                if set(self.models) <= served:
                    return True
                self.supervisor.poll()
                time.sleep(0.2)
            return False
        finally:
            client.close()

    def wait(self) -> None:
        while not self._stop:
            self.supervisor.poll()
            if self.supervisor.gave_up:
                log.error(
                    "stack_stopping", reason="worker gave up", workers=self.supervisor.gave_up
                )
                return
            time.sleep(0.5)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.embedded is not None:
            self.embedded.stop()
