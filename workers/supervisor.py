"""Starts worker processes, one per (device, slot), and restarts crashed ones.

No torch here: each worker is its own process (``framepool worker``) that pins
its device before torch is imported, so CUDA is never touched in a process
that forks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from framepool.log import get_logger
from framepool.nvml import device_count

log = get_logger(__name__)

EXIT_OK = 0
EXIT_GAVE_UP = 3  # a worker crashed too often


@dataclass
class WorkerSpec:
    name: str
    device: str
    models: Sequence[str]
    concurrency: int | None = None

    def argv(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "framepool.cli",
            "worker",
            "--device",
            self.device,
            "--models",
            ",".join(self.models),
            "--name",
            self.name,
        ]
        if self.concurrency:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd


@dataclass
class _Child:
    spec: WorkerSpec
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0


def detect_gpus() -> int:
    """Number of NVIDIA GPUs via NVML (0 when no driver or library)."""
    return device_count()


def plan_workers(
    gpus: str, workers_per_gpu: int, models: Sequence[str], host: str
) -> list[WorkerSpec]:
    """``--gpus all|none|0,1`` → one spec per (GPU, slot); a CPU worker without GPUs."""
    if gpus == "none":
        ids: list[int] = []
    elif gpus == "all":
        ids = list(range(detect_gpus()))
    else:
        try:
            ids = [int(x) for x in gpus.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"--gpus must be all, none or a list like 0,1; got {gpus!r}") from exc
    if not ids:
        return [WorkerSpec(f"cpu-{k}@{host}", "cpu", models) for k in range(1, workers_per_gpu + 1)]
    return [
        WorkerSpec(f"gpu{i}-{k}@{host}", f"cuda:{i}", models)
        for i in ids
        for k in range(1, workers_per_gpu + 1)
    ]


class Supervisor:
    """Keeps worker processes running; gives up on one that crashes too often."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        env: Mapping[str, str] | None = None,
        max_restarts: int = 5,
        window_s: float = 60.0,
        log_dir: str | None = None,
    ) -> None:
        self.children = [_Child(s) for s in specs]
        self.env = {**os.environ, **(env or {})}
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.log_dir = log_dir
        self.gave_up: list[str] = []

    def _spawn(self, child: _Child) -> None:
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            safe = child.spec.name.replace("@", "_")
            out = open(os.path.join(self.log_dir, f"{safe}.log"), "ab")  # noqa: SIM115
        child.proc = subprocess.Popen(
            child.spec.argv(),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.info("worker_spawned", worker=child.spec.name, pid=child.proc.pid)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def poll(self) -> None:
        """Restart children that exited, with backoff (call this periodically)."""
        now = time.monotonic()
        for child in self.children:
            if child.spec.name in self.gave_up or child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.restarts = [t for t in child.restarts if now - t < self.window_s]
            if len(child.restarts) >= self.max_restarts:
                log.error(
                    "worker_gave_up",
                    worker=child.spec.name,
                    exitcode=code,
                    restarts=len(child.restarts),
                )
                self.gave_up.append(child.spec.name)
                continue
            if child.next_start == 0.0:
                delay = min(30.0, 2.0 ** len(child.restarts))
                child.next_start = now + delay
                log.warning(
                    "worker_exited", worker=child.spec.name, exitcode=code, restart_in_s=delay
                )
            if now >= child.next_start:
                child.restarts.append(now)
                child.next_start = 0.0
                self._spawn(child)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every worker (Celery drains: finishes its batches), then SIGKILL."""
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()

    @property
    def exit_code(self) -> int:
        return EXIT_GAVE_UP if self.gave_up else EXIT_OK
