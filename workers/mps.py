"""CUDA MPS for the workers that share a GPU: started before them, stopped after them.

Processes that share a GPU without MPS take turns on it: each has its own CUDA
context and the GPU time-slices between them, so their kernels never overlap and
each switch costs time. MPS (NVIDIA's Multi-Process Service) runs their kernels
through one server, side by side. On an H100 with resnet50 (fp16, batch 64), 8
framepool workers on the one GPU served 1874 frames/s without MPS and 2661 with
it, in one call on one machine; 4 workers 2354 and 2493 (docs/benchmarks.md,
"GPU"). Its cost: a fatal GPU fault in one worker (an illegal address, say) ends
every worker on that GPU, where without MPS it ends that worker alone; the
supervisor restarts them.

``CUDA_MPS``: ``auto`` (default) starts the daemon when two or more workers share
a GPU and ``nvidia-cuda-mps-control`` is on ``PATH`` (it comes with NVIDIA's
driver), and goes on without MPS, saying why, when it cannot; ``on`` needs it
(no control binary, or a daemon that does not start, is an error); ``off`` never
starts it. The daemon is this run's own: its pipe and log directories are under
``DATA_DIR/mps`` (``CUDA_MPS_PIPE_DIRECTORY``, ``CUDA_MPS_LOG_DIRECTORY``, passed to
the workers alone), so other processes on the host, and another daemon, are
left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from framepool.errors import BadInput
from framepool.log import get_logger

log = get_logger(__name__)

CONTROL = "nvidia-cuda-mps-control"
MODES = ("auto", "on", "off")
#: seconds for the control binary to start the daemon, or to answer ``quit``
CALL_TIMEOUT_S = 30.0


class MpsUnavailable(RuntimeError):
    """The MPS control daemon could not be started."""


def shared_gpus(devices: Sequence[str]) -> list[str]:
    """The CUDA devices that two or more of ``devices`` (the workers') name."""
    counts = Counter(d for d in devices if d.startswith("cuda"))
    return sorted(d for d, n in counts.items() if n > 1)


class MpsDaemon:
    """One ``nvidia-cuda-mps-control -d`` with its pipe and log directories under ``root``."""

    def __init__(self, root: Path, binary: str) -> None:
        self.root = Path(root).resolve()
        self.binary = binary
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        """What a CUDA process needs to run through this daemon."""
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.root / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.root / "log"),
        }

    def _call(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT_S,
            env={**os.environ, **self.env},
        )

    def start(self) -> MpsDaemon:
        for d in ("pipe", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        try:
            done = self._call(["-d"])
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MpsUnavailable(f"{self.binary} -d: {exc}") from exc
        said = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            if "already running" not in said:  # a daemon on our pipe dir: an earlier run's
                raise MpsUnavailable(f"{self.binary} -d exited {done.returncode}: {said[-500:]}")
            log.warning("mps_daemon_reused", pipe_dir=self.env["CUDA_MPS_PIPE_DIRECTORY"])
        self.running = True
        log.info("mps_daemon_started", pipe_dir=self.env["CUDA_MPS_PIPE_DIRECTORY"])
        return self

    def stop(self) -> None:
        """``quit``: the daemon waits for its clients (the workers, stopped by now) and exits."""
        if not self.running:
            return
        self.running = False
        try:
            done = self._call([], stdin="quit\n")
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("mps_daemon_stop_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if done.returncode != 0:
            log.warning("mps_daemon_stop_failed", said=(done.stdout + done.stderr).strip()[-300:])
        else:
            log.info("mps_daemon_stopped")


def start_mps(mode: str, devices: Sequence[str], root: Path) -> tuple[MpsDaemon | None, str]:
    """The daemon ``CUDA_MPS`` asks for, started, for workers on ``devices``; and a line
    saying what was done and why (for ``framepool up``'s summary). Raises
    :class:`~framepool.errors.BadInput` where ``on`` cannot be honoured."""
    if mode not in MODES:
        raise BadInput(f"CUDA_MPS must be one of {', '.join(MODES)}, got {mode!r}")
    shared = shared_gpus(devices)
    if mode == "off":
        return None, "off (CUDA_MPS=off)"
    if mode == "auto" and not shared:
        return None, "off (no GPU has two workers)"
    if not any(d.startswith("cuda") for d in devices):
        return None, "off (no worker on a GPU)"
    binary = shutil.which(CONTROL)
    if binary is None:
        if mode == "on":
            raise BadInput(f"CUDA_MPS=on, but {CONTROL} is not on PATH (NVIDIA's driver ships it)")
        return None, f"off ({CONTROL} not on PATH; workers on {', '.join(shared)} take turns)"
    daemon = MpsDaemon(root, binary)
    try:
        daemon.start()
    except MpsUnavailable as exc:
        if mode == "on":
            raise BadInput(f"CUDA_MPS=on, but the MPS daemon did not start: {exc}") from None
        log.warning("mps_unavailable", error=str(exc))
        return None, f"off (the daemon did not start: {exc})"
    gpus = ", ".join(shared) or "every GPU"
    return daemon, f"on for {gpus} (pipe {daemon.env['CUDA_MPS_PIPE_DIRECTORY']})"
