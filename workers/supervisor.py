"""``framepool up``'s workers kept running: started as planned, restarted, drained.

The plan (which process on which GPU with which models) is
:func:`workers.placement.plan_workers`. :class:`Supervisor` starts one process per
:class:`~workers.placement.WorkerSpec`, restarts a worker that exits, after a backoff that doubles
(``WORKER_RESTART_BACKOFF_SECONDS``, at most 30 s), and gives up on one that exits
more than ``WORKER_MAX_RESTARTS`` times within ``WORKER_RESTART_WINDOW_SECONDS``
(:data:`EXIT_GAVE_UP`). :meth:`Supervisor.stop` drains: SIGTERM, and each worker
hands back the frames it has not started, finishes its running batches within
``SHUTDOWN_GRACE_SECONDS`` and exits; SIGKILL only after :data:`STOP_MARGIN_S` more."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from framepool.log import get_logger
from framepool.settings import Settings
from workers.placement import WorkerSpec

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
                env={**child.spec.env_defaults, **self.env, **child.spec.env},
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
