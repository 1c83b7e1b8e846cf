"""``framepool up``: Redis (embedded if needed), supervised workers, the monitor and the gateway.

The monitor and the gateway get an ``API_TOKEN``: the one in the settings, or
one generated for this run and printed with the URLs. Flower (unless
``--no-flower``) gets ``FLOWER_BASIC_AUTH`` the same way, and the webhook
worker (``framepool callbacks``) ``CALLBACK_SECRET``.

Like the CLI, this launcher reaches into ``workers`` (for the supervisor) at
call time; the rest of the core imports no other package.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis

from framepool import keys
from framepool.flower import generate_basic_auth, parse_basic_auth
from framepool.log import get_logger
from framepool.redis_server import EmbeddedRedis, ensure_redis
from framepool.settings import Settings

if TYPE_CHECKING:
    from workers.mps import MpsDaemon

log = get_logger(__name__)


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f":***@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Service:
    """A framepool service (``framepool <command>``) as a child process, restarted if it dies."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._next_start = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "framepool.cli", *self.argv],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("service_started", service=self.name, pid=self.proc.pid)

    def poll(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if self._next_start == 0.0:
            delay = min(30.0, 2.0**self.restarts)
            self._next_start = now + delay
            log.warning(
                "service_exited",
                service=self.name,
                exitcode=self.proc.returncode,
                restart_in_s=delay,
            )
        elif now >= self._next_start:
            self.restarts += 1
            self._next_start = 0.0
            self.start()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Stack:
    def __init__(
        self,
        settings: Settings,
        *,
        gpus: str,
        workers_per_gpu: int,
        models: list[str],
        monitor: bool = True,
        gateway: bool = True,
        flower: bool = True,
    ) -> None:
        from workers.placement import plan_for

        self.settings = settings
        # one worker per (GPU, slot), models placed on each GPU's memory (docs/scaling.md)
        self.plan = plan_for(settings, gpus, workers_per_gpu, models, socket.gethostname())
        self.specs = self.plan.specs
        self.models = models
        self.redis_url = settings.redis_url
        self.embedded: EmbeddedRedis | None = None
        self.supervisor: Any = None
        self.mps: MpsDaemon | None = None  # when CUDA_MPS started one
        self.mps_note = ""
        self.services: list[Service] = []
        self.monitor = monitor
        self.gateway = gateway
        self.api_token = settings.api_token or secrets.token_urlsafe(18)
        # the webhook worker's HMAC key: CALLBACK_SECRET, or generated for this run
        self.callback_secret_generated = not settings.callback_secret.get_secret_value()
        self.callback_secret = settings.callback_secret.get_secret_value() or secrets.token_hex(32)
        self.flower = flower
        # Flower's basic auth: FLOWER_BASIC_AUTH (checked now), or generated for this run
        self.flower_auth = settings.flower_basic_auth or generate_basic_auth()
        parse_basic_auth(self.flower_auth)
        self._stop = False

    def __enter__(self) -> Stack:
        from workers.mps import start_mps
        from workers.supervisor import Supervisor

        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        # first: a CUDA_MPS=on that cannot be honoured stops `up` before anything runs
        self.mps, self.mps_note = start_mps(
            self.settings.cuda_mps, [s.device for s in self.specs], data_dir / "mps"
        )
        try:
            self.redis_url, self.embedded = ensure_redis(
                self.settings.redis_url, data_dir, self.settings.redis_io_threads
            )
            if self.embedded is not None:  # ours alone: forget what earlier runs registered
                redis.Redis.from_url(self.redis_url).delete(keys.SERVED_MODELS)
            env = {"REDIS_URL": self.redis_url, "LOG_FORMAT": "json"}
            worker_env = {**env, **(self.mps.env if self.mps is not None else {})}
            self.supervisor = Supervisor.from_settings(
                self.specs, self.settings, env=worker_env, log_dir=data_dir / "logs"
            )
            self.supervisor.start()
        except BaseException:  # nothing of ours left running: the daemon, our Redis
            if self.mps is not None:
                self.mps.stop()
            if self.embedded is not None:
                self.embedded.stop()
            raise
        svc_env = {**env, "API_TOKEN": self.api_token, "LOG_FORMAT": "json"}
        for name, wanted in (("monitor", self.monitor), ("gateway", self.gateway)):
            if wanted:
                service = Service(name, [name], svc_env, data_dir / "logs")
                service.start()
                self.services.append(service)
        callbacks_env = {**env, "CALLBACK_SECRET": self.callback_secret}
        service = Service("callbacks", ["callbacks"], callbacks_env, data_dir / "logs")
        service.start()
        self.services.append(service)
        if self.flower:
            flower_env = {**env, "FLOWER_BASIC_AUTH": self.flower_auth}
            service = Service("flower", ["flower"], flower_env, data_dir / "logs")
            service.start()
            self.services.append(service)
        signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def print_urls(self) -> None:
        print(f"redis    {mask_url(self.redis_url)}" + ("  (embedded)" if self.embedded else ""))
        if self.embedded is not None and self.embedded.password:
            # its password is generated: the SDK and the CLI in another shell need it
            print(f"export REDIS_URL={self.redis_url}  (for the SDK and CLI in another shell)")
        for spec in self.specs:
            print(f"worker   {spec.name}  device={spec.device}  models={','.join(spec.models)}")
        for note in self.plan.notes:
            print(f"note     {note}")
        if any(s.device.startswith("cuda") for s in self.specs):
            print(f"mps      {self.mps_note}  (CUDA_MPS)")
        if self.monitor:
            host, port = self.settings.server_host, self.settings.monitor_port
            print(f"monitor  http://{host}:{port}/?token={self.api_token}  (dashboard)")
            print(f"metrics  http://{host}:{port}/metrics   API docs http://{host}:{port}/docs")
        if self.gateway:
            host, port = self.settings.server_host, self.settings.server_port
            print(f"gateway  http://{host}:{port}/inference  (POST frames; /docs)")
        if self.monitor or self.gateway:
            print(f"token    {self.api_token}  (Authorization: Bearer …, or ?token=)")
        if self.callback_secret_generated:
            print(f"webhooks secret {self.callback_secret}  (generated; set CALLBACK_SECRET)")
        else:
            print("webhooks signed with CALLBACK_SECRET  (queue framepool.callbacks)")
        if self.flower:
            host, port = self.settings.server_host, self.settings.flower_port
            user, password = parse_basic_auth(self.flower_auth)[0]
            print(f"flower   http://{host}:{port}/  user {user}  password {password}")
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
            for service in self.services:
                service.poll()
            if self.supervisor.gave_up:
                log.error(
                    "stack_stopping", reason="worker gave up", workers=self.supervisor.gave_up
                )
                return
            time.sleep(0.5)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Drain: the gateway takes no more frames, the workers hand back the frames they
        # have not started and finish their batches (SHUTDOWN_GRACE_SECONDS), then the
        # other services stop. A second Ctrl-C or SIGTERM stops waiting for the workers.
        def hurry(signum: int, frame: FrameType | None) -> None:
            if self.supervisor is not None:
                self.supervisor.hurry()

        signal.signal(signal.SIGINT, hurry)
        signal.signal(signal.SIGTERM, hurry)
        first = [s for s in self.services if s.name == "gateway"]
        for service in first:
            service.stop()
        if self.supervisor is not None:
            if self.supervisor.pids():
                print(
                    f"draining workers (up to {self.settings.shutdown_grace_seconds:g} s; "
                    "Ctrl-C again to stop them now)",
                    file=sys.stderr,
                    flush=True,
                )
            self.supervisor.stop()
        if self.mps is not None:  # after its clients, the workers
            self.mps.stop()
        for service in self.services:
            if service not in first:
                service.stop()
        if self.embedded is not None:
            self.embedded.stop()
