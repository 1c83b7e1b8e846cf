"""A sandbox for a benchmark: a temp directory, one Redis, and worker subprocesses,
always cleaned up.

Every child runs in its own session (``start_new_session=True``) and is stopped by
signalling its whole process group, so nothing outlives the benchmark: not on
success, not on an exception, not on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from benchmarks.harness import ROOT


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after ``grace`` s."""
    if proc.poll() is not None:
        _reap_group(proc.pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    _reap_group(proc.pid)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _reap_group(pgid: int) -> None:
    """SIGKILL any straggler left in the group (a child's own children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class BenchError(RuntimeError):
    pass


@dataclass
class Sandbox:
    """A temp directory, one Redis, and the children started in it; all removed on exit."""

    keep_dir: bool = False
    env: dict[str, str] = field(default_factory=dict)
    dir: Path = field(init=False)
    redis: Any = field(init=False, default=None)
    children: list[Child] = field(init=False, default_factory=list)
    _old_handlers: dict[int, Any] = field(init=False, default_factory=dict)

    def __enter__(self) -> Sandbox:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
        self.dir = Path(tempfile.mkdtemp(prefix="framepool-bench-"))
        try:
            from framepool.redis_server import EmbeddedRedis
            from framepool.settings import Settings

            # As ``framepool up`` starts it: a password, AOF on (everysec), 127.0.0.1,
            # REDIS_IO_THREADS I/O threads (default 1)
            self.redis = EmbeddedRedis(self.dir / "redis", password=secrets.token_urlsafe(18),
                                       io_threads=Settings().redis_io_threads)  # fmt: skip
            self.redis.start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    @property
    def redis_url(self) -> str:
        return str(self.redis.url)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:  # fmt: skip
        """Start ``argv`` in its own session, output to ``<dir>/<name>.log``, in ``cwd``
        (the checkout's root unless given)."""
        log_path = self.dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {})}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd or ROOT),
                start_new_session=True,
            )
        child = Child(name, list(argv), log_path, proc)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        kill_group(child.proc)
        if child in self.children:
            self.children.remove(child)

    def wait_until(
        self, cond: Callable[[], bool], timeout: float, what: str, watch: Sequence[Child] = ()
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            for c in watch:
                if not c.alive():
                    raise BenchError(f"{c.name} exited ({c.proc.returncode}):\n{c.log_tail()}")
            time.sleep(0.1)
        tails = "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in watch)
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for child in reversed(self.children):
                with contextlib.suppress(Exception):  # keep cleaning up the others
                    kill_group(child.proc)
            self.children.clear()
            if self.redis is not None:
                proc = self.redis.proc
                with contextlib.suppress(Exception):
                    self.redis.stop(timeout=5)
                if proc is not None:
                    kill_group(proc, grace=1.0)
                self.redis = None
        finally:
            if not self.keep_dir and getattr(self, "dir", None) is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            self._old_handlers.clear()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_sandboxed(body: Callable[[Sandbox], None], *around: Any) -> int | None:
    """Run ``body`` in a fresh :class:`Sandbox` (inside the ``around`` context
    managers); None when it finished, else the exit code with the reason printed:
    130 when interrupted, 1 when it failed. Workers and Redis are stopped either way."""
    try:
        with contextlib.ExitStack() as stack:
            for cm in around:
                stack.enter_context(cm)
            sb = stack.enter_context(Sandbox())
            try:
                body(sb)
            except BaseException as exc:
                # Drop the result handles the traceback's frames hold while Redis is
                # still up: Celery's AsyncResult.__del__ otherwise retries a gone
                # Redis for 20 s after the sandbox has stopped it.
                traceback.clear_frames(exc.__traceback__)
                gc.collect()
                raise
    except KeyboardInterrupt:
        print("interrupted: workers and Redis stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # workers and Redis are already stopped here
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return None


def run_measure(measure: Callable[[Sandbox], dict[str, Any]]) -> dict[str, Any] | int:
    """``measure(sandbox)``'s figures, with framepool's logs quiet, or the exit code
    when the run failed or was interrupted (:func:`run_sandboxed`)."""
    res: dict[str, Any] = {}
    failed = run_sandboxed(lambda sb: res.update(measure(sb)), quiet_logs())
    return failed if failed is not None else res


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """framepool's and Celery's logging at WARNING in the benchmark process."""
    import logging

    from framepool.log import configure_logging
    from framepool.settings import Settings

    configure_logging(Settings(log_level="WARNING", log_format="console"))
    logging.getLogger("celery").setLevel(logging.WARNING)
    yield
