"""A framepool HTTP service (``python -m framepool.cli <command> --port P``) as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from framepool.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """Starts ``framepool <command>`` on a free port and waits until ``ready_path`` answers 200."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        log_path: Path,
        *,
        ready_path: str,
        timeout: float = 30.0,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framepool.cli", command, "--port", str(self.port), *args],
            env={**os.environ, "SERVER_HOST": "127.0.0.1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{command} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{ready_path}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{command} not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


class Gateway(ServiceProcess):
    def __init__(self, redis_url: str, log_path: Path, **env: str) -> None:
        super().__init__(
            "gateway",
            {"REDIS_URL": redis_url, "LOG_FORMAT": "json", **env},
            log_path,
            ready_path="/metrics",  # /health is 503 while Redis is away, by design
        )
        self.headers: dict[str, str] = {}

    def post(self, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=60, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=60, **kw)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``framepool <args>`` as a real process in the repository root; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "framepool.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
