"""``framepool up``'s workers: one process per (GPU, slot), placed, pinned, kept running.

No torch here: each worker is its own process (``framepool worker``) started with
``CUDA_VISIBLE_DEVICES`` set to its GPU (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so
CUDA numbers GPUs as NVML does), so CUDA is never touched in a process that forks.

- :func:`plan_workers` turns ``--gpus all|none|0,1 --workers-per-gpu N --models a,b``
  into :class:`WorkerSpec` s named ``gpu<i>-<k>@<host>`` (``cpu-<k>@<host>`` without a
  GPU). Models are placed by the :class:`~workers.gpu_manager.GPUManager` on each
  GPU's memory as NVML reads it now: a model goes to the GPUs where N copies of it
  (one per worker) fit beside the models before it in ``--models`` and
  ``GPU_MEMORY_RESERVE_MB``; one that fits on no GPU goes to CPU workers under
  ``GPU_FALLBACK_TO_CPU``, else the plan is refused (:class:`ModelRefused`).
- :class:`Supervisor` restarts a worker that exits, after a backoff that doubles
  (``WORKER_RESTART_BACKOFF_SECONDS``, at most 30 s), and gives up on one that exits
  more than ``WORKER_MAX_RESTARTS`` times within ``WORKER_RESTART_WINDOW_SECONDS``
  (:data:`EXIT_GAVE_UP`). :meth:`Supervisor.stop` drains: SIGTERM, and each worker
  hands back the frames it has not started, finishes its running batches within
  ``SHUTDOWN_GRACE_SECONDS`` and exits; SIGKILL only after :data:`STOP_MARGIN_S` more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from framepool.errors import BadInput, ModelRefused
from framepool.log import get_logger
from framepool.manifest import discover
from framepool.nvml import GpuReading, NvmlSampler, device_count
from framepool.settings import Settings
from workers.gpu_manager import GPUManager

log = get_logger(__name__)

EXIT_OK = 0
#: ``framepool up`` stopped because a worker kept exiting (the CLI's 2 and 3 and the
#: worker's 4 and 5 mean other things: see the README's exit codes).
EXIT_GAVE_UP = 6
#: Seconds past the grace before a worker that has not exited is SIGKILLed: its own
#: hand-back at the end of the grace needs a moment.
STOP_MARGIN_S = 10.0
MAX_BACKOFF_S = 30.0

#: What a worker's exit code means (workers/main.py, framepool/cli.py).
_EXIT_MEANINGS = {
    0: "stopped",
    2: "bad input or settings",
    3: "Redis unreachable",
    4: "no model could be loaded",
    5: "its GPU was lost",
}


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}" + (f" ({_EXIT_MEANINGS[code]})" if code in _EXIT_MEANINGS else "")


@dataclass
class WorkerSpec:
    name: str
    device: str
    models: Sequence[str]
    concurrency: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "framepool.cli", "worker", "--device", self.device]
        cmd += ["--models", ",".join(self.models), "--name", self.name]
        if self.concurrency:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd


def pin_env(gpu: int | None) -> dict[str, str]:
    """The environment that pins a worker to NVML's GPU ``gpu`` (``None``: no GPU)."""
    if gpu is None:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {"CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


# ------------------------------------------------------------------- placement
def detect_gpus() -> int:
    """Number of NVIDIA GPUs via NVML (0 when no driver or library)."""
    return device_count()


def gpu_ids(gpus: str, count: Callable[[], int] = detect_gpus) -> list[int]:
    """``all`` → every GPU NVML sees, ``none`` → [], ``0,1`` → [0, 1]."""
    if gpus == "none":
        return []
    if gpus == "all":
        return list(range(count()))
    try:
        ids = [int(x) for x in gpus.split(",") if x.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise BadInput(f"--gpus must be all, none or a list like 0,1; got {gpus!r}")
    return ids


class NvmlMemory:
    """GPU memory as one NVML reading shows it (machine indices), for planning only."""

    def __init__(self, readings: Sequence[GpuReading]) -> None:
        self._by_index = {r.index: r for r in readings}

    @classmethod
    def read(cls) -> NvmlMemory | None:
        sampler = NvmlSampler()
        try:
            readings = sampler.read()
        finally:
            sampler.shutdown()
        return cls(readings) if readings else None

    def indices(self) -> list[int]:
        return sorted(self._by_index)

    def knows(self, i: int) -> bool:
        r = self._by_index.get(i)
        return r is not None and r.memory_total_mb is not None and r.memory_used_mb is not None

    def count(self) -> int:
        return len(self._by_index)

    def total_mb(self, i: int) -> float:
        return float(self._by_index[i].memory_total_mb or 0.0)

    def free_mb(self, i: int) -> float:
        r = self._by_index[i]
        return float((r.memory_total_mb or 0.0) - (r.memory_used_mb or 0.0))

    def peak_mb(self, i: int) -> float:
        return 0.0

    def reset_peak(self, i: int) -> None:
        return None

    def empty_cache(self) -> None:
        return None


class _OneGpu:
    """GPU ``index`` of ``memory`` shown as a machine's only GPU (one GPUManager per GPU).

    Its total is the memory free now: the manager takes the plan's own allocations
    off ``total - allocated``, which NVML's free memory does not yet show."""

    def __init__(self, memory: NvmlMemory, index: int) -> None:
        self.memory, self.index = memory, index

    def count(self) -> int:
        return 1

    def total_mb(self, i: int) -> float:
        return self.memory.free_mb(self.index)

    def free_mb(self, i: int) -> float:
        return self.memory.free_mb(self.index)

    def peak_mb(self, i: int) -> float:
        return 0.0

    def reset_peak(self, i: int) -> None:
        return None

    def empty_cache(self) -> None:
        return None


@dataclass
class Plan:
    """The workers to start, and what placement had to say (printed by ``framepool up``)."""

    specs: list[WorkerSpec]
    notes: list[str] = field(default_factory=list)


def _fits_every_slot(gm: GPUManager, model: str, mb: float, slots: int) -> bool:
    """Allocate ``slots`` copies of ``model`` (one per worker), or none of them."""
    done: list[str] = []
    try:
        for k in range(slots):
            gm.allocate(f"{model}#{k}", "plan", mb)
            done.append(f"{model}#{k}")
    except ModelRefused:
        for key in done:
            gm.release(key, "plan")
        return False
    return True


def plan_workers(
    gpus: str,
    workers_per_gpu: int,
    models: Sequence[str],
    host: str,
    *,
    memory: NvmlMemory | None = None,
    model_mb: Mapping[str, float] | None = None,
    reserve_mb: float = 0.0,
    fallback_to_cpu: bool = True,
    count: Callable[[], int] = detect_gpus,
) -> Plan:
    """The workers for ``--gpus``, ``--workers-per-gpu`` and ``--models`` (module docstring).

    Without ``memory`` (NVML unreadable) every model goes to every GPU and each
    worker's own GPU manager places it when it loads."""
    if workers_per_gpu < 1:
        raise BadInput(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
    ids = gpu_ids(gpus, count)
    slots = range(1, workers_per_gpu + 1)
    notes: list[str] = []
    placed: dict[int, list[str]] = {i: list(models) for i in ids}
    if ids and memory is not None:
        for i in ids:
            if not memory.knows(i):
                notes.append(f"GPU {i}: memory unknown to NVML; each worker places its own models")
                continue
            gm = GPUManager(True, reserve_mb, False, devices=_OneGpu(memory, i))
            placed[i] = []
            for m in models:
                mb = (model_mb or {}).get(m, 0.0)
                taken = gm.get_stats()["total_allocated_mb"]
                if _fits_every_slot(gm, m, mb, workers_per_gpu):
                    placed[i].append(m)
                    continue
                notes.append(
                    f"GPU {i}: {m} left off: {workers_per_gpu} x {mb:g} MB do not fit in "
                    f"{memory.free_mb(i):.0f} MB free less {reserve_mb:g} MB reserve "
                    f"and {taken:g} MB for the models before it"
                )
            if not placed[i]:
                notes.append(f"GPU {i}: no model fits, no worker started there")
    elif ids:
        notes.append("GPU memory unreadable (NVML): every model goes to every GPU")
    nowhere = [m for m in models if not any(m in ms for ms in placed.values())]
    if ids and nowhere and not fallback_to_cpu:
        raise ModelRefused(
            f"{', '.join(nowhere)} fit(s) on no GPU ({'; '.join(notes)}); GPU_FALLBACK_TO_CPU is off"
        )
    specs = [
        WorkerSpec(f"gpu{i}-{k}@{host}", f"cuda:{i}", ms, env=pin_env(i))
        for i, ms in placed.items()
        if ms
        for k in slots
    ]
    cpu_models = nowhere if ids else list(models)
    if cpu_models:
        if ids:
            notes.append(f"{', '.join(cpu_models)} on CPU workers (GPU_FALLBACK_TO_CPU)")
        specs += [
            WorkerSpec(f"cpu-{k}@{host}", "cpu", cpu_models, env=pin_env(None)) for k in slots
        ]
    for note in notes:
        log.warning("placement_note", note=note)
    return Plan(specs, notes)


def plan_for(
    settings: Settings, gpus: str, workers_per_gpu: int, models: Sequence[str], host: str
) -> Plan:
    """:func:`plan_workers` with this machine's GPUs (NVML) and the models' manifests."""
    if not settings.enable_gpu and gpus != "none":
        plan = plan_workers("none", workers_per_gpu, models, host)
        plan.notes.insert(0, "ENABLE_GPU=false: CPU workers only")
        return plan
    manifests, _ = discover(settings.models_root)
    n = detect_gpus() if gpus == "all" else 0
    ids = gpu_ids(gpus, lambda: n)
    memory = NvmlMemory.read() if ids else None
    missing = [i for i in ids if memory is not None and i not in memory.indices()]
    if missing and memory is not None:
        raise BadInput(
            f"--gpus {gpus}: no GPU {', '.join(map(str, missing))} on this machine "
            f"(NVML sees {', '.join(map(str, memory.indices()))})"
        )
    return plan_workers(
        gpus,
        workers_per_gpu,
        models,
        host,
        memory=memory,
        model_mb={m: manifests[m].memory_mb for m in models if m in manifests},
        reserve_mb=settings.gpu_memory_reserve_mb,
        fallback_to_cpu=settings.gpu_fallback_to_cpu,
        count=lambda: n,
    )


# ------------------------------------------------------------------ supervision
@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0

    @classmethod
    def from_settings(cls, s: Settings) -> RestartPolicy:
        return cls(
            s.worker_max_restarts, s.worker_restart_window_seconds, s.worker_restart_backoff_seconds
        )

    def delay(self, recent_restarts: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2.0**recent_restarts)


@dataclass
class _Child:
    spec: WorkerSpec
    log_path: Path | None
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0


class Supervisor:
    """Keeps worker processes running; gives up on one that exits too often (module docstring)."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy | None = None,
        log_dir: str | Path | None = None,
        grace_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.children = [_Child(s, self._log_path(s)) for s in specs]
        self.env = {**os.environ, **(env or {})}
        self.policy = policy or RestartPolicy()
        self.grace_s = grace_s
        self.clock = clock
        self.gave_up: list[str] = []
        self.messages: list[str] = []
        self._hurry = False

    def _log_path(self, spec: WorkerSpec) -> Path | None:
        return self.log_dir / f"{spec.name.replace('@', '_')}.log" if self.log_dir else None

    def _spawn(self, child: _Child) -> None:
        out: IO[bytes] | int = subprocess.DEVNULL
        if child.log_path is not None:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = child.log_path.open("ab")
        try:
            child.proc = subprocess.Popen(
                child.spec.argv(),
                env={**self.env, **child.spec.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signalled as a whole
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        log.info("worker_spawned", worker=child.spec.name, pid=child.proc.pid)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.proc.pid for c in self.children if c.proc and c.proc.poll() is None}

    def poll(self) -> None:
        """Restart children that exited, with backoff (call this periodically)."""
        now = self.clock()
        for child in self.children:
            if child.spec.name in self.gave_up or child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.restarts = [t for t in child.restarts if now - t < self.policy.window_s]
            if len(child.restarts) >= self.policy.max_restarts:
                self._give_up(child, code)
                continue
            if child.next_start == 0.0:
                delay = self.policy.delay(len(child.restarts))
                child.next_start = now + delay
                log.warning(
                    "worker_exited", worker=child.spec.name, exitcode=code, restart_in_s=delay
                )
            if now >= child.next_start:
                child.restarts.append(now)
                child.next_start = 0.0
                self._spawn(child)

    def _give_up(self, child: _Child, code: int) -> None:
        name, exits = child.spec.name, len(child.restarts) + 1
        log.error("worker_gave_up", worker=name, exitcode=code, exits=exits)
        self.gave_up.append(name)
        text = (
            f"worker {name} exited {exits} times within {self.policy.window_s:g} s "
            f"(WORKER_MAX_RESTARTS={self.policy.max_restarts}), the last time with "
            f"{describe_exit(code)}: giving up"
        )
        if child.log_path is not None:
            text += f"\n  its log: {child.log_path}" + "".join(
                f"\n  | {line}" for line in _tail(child.log_path)
            )
        self.messages.append(text)

    def hurry(self) -> None:
        """Stop waiting for the drain: SIGKILL what is left (a second Ctrl-C)."""
        self._hurry = True

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM every worker (it drains, see the module docstring), then SIGKILL stragglers."""
        grace = self.grace_s if grace_s is None else grace_s
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in live:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        began = self.clock()
        deadline = began + grace + STOP_MARGIN_S
        while not self._hurry and self.clock() < deadline:
            if all(c.proc is not None and c.proc.poll() is not None for c in live):
                break
            time.sleep(0.1)
        for child in self.children:
            if child.proc is None:
                continue
            if child.proc.poll() is None:
                waited = round(self.clock() - began, 1)
                log.warning(
                    "worker_killed", worker=child.spec.name, after_s=waited, hurried=self._hurry
                )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)  # the group's stragglers too
            child.proc.wait()

    @property
    def exit_code(self) -> int:
        return EXIT_GAVE_UP if self.gave_up else EXIT_OK

    @classmethod
    def from_settings(
        cls, specs: Sequence[WorkerSpec], settings: Settings, **kw: Any
    ) -> Supervisor:
        return cls(
            specs,
            policy=RestartPolicy.from_settings(settings),
            grace_s=settings.shutdown_grace_seconds,
            **kw,
        )


def _tail(path: Path, lines: int = 5) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [ln[:300] for ln in text.strip().splitlines()[-lines:]]
