"""A model's lifecycle state and its health, judged from recent error rates.

Pure logic: no torch, no Celery. The runner reports each batch's outcome with
:meth:`ModelHealth.record`; the state follows the error rate over the last
``window`` frames::

    loading -> ready <-> degraded <-> unhealthy        (any -> failed, terminal)

A model moves only once ``min(window, 10)`` frames are in the window, so one
bad frame after start-up does not mark it unhealthy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from framepool.log import get_logger

log = get_logger(__name__)

MIN_SAMPLES = 10


class ModelState(StrEnum):
    """A model's state; values equal names (and ``str(state)`` is the value)."""

    loading = "loading"
    ready = "ready"
    degraded = "degraded"
    unhealthy = "unhealthy"
    failed = "failed"


OnChange = Callable[[str, ModelState, ModelState, str], None]
_JUDGED = (ModelState.ready, ModelState.degraded, ModelState.unhealthy)


class ModelHealth:
    """Thread-safe state of one model.

    ``on_change(model_id, old, new, reason)`` is called after each transition,
    outside the lock; an exception from it is logged and swallowed.
    """

    def __init__(
        self,
        model_id: str,
        window: int,
        degraded_rate: float,
        unhealthy_rate: float,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if not 0 < degraded_rate <= unhealthy_rate <= 1:
            raise ValueError("need 0 < degraded_rate <= unhealthy_rate <= 1")
        self.model_id = model_id
        self.window = window
        self.degraded_rate = degraded_rate
        self.unhealthy_rate = unhealthy_rate
        self.min_samples = min(window, MIN_SAMPLES)
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque()  # True = error, newest on the right
        self._recent_errors = 0
        self._state = ModelState.loading
        self._reason = "loading"
        self._since = clock()
        self.inferences = 0
        self.errors = 0

    @property
    def state(self) -> ModelState:
        with self._lock:
            return self._state

    def ready(self) -> None:
        """The model is loaded and warmed up; starts with an empty window."""
        with self._lock:
            if self._state is ModelState.failed:
                log.warning("model_ready_after_failed", model_id=self.model_id)
                return
            self._recent.clear()
            self._recent_errors = 0
            change = self._set(ModelState.ready, "loaded")
        self._notify(change)

    def failed(self, reason: str) -> None:
        """The model cannot serve (load failed, device lost); terminal."""
        with self._lock:
            change = self._set(ModelState.failed, reason)
        self._notify(change)

    def record(self, ok: int, errors: int) -> ModelState:
        """Record a batch's frames: ``ok`` succeeded, ``errors`` failed. Returns the state."""
        if ok < 0 or errors < 0:
            raise ValueError("ok and errors must be >= 0")
        with self._lock:
            self.inferences += ok + errors
            self.errors += errors
            self._push(ok, errors)
            change = self._judge()
            state = self._state
        self._notify(change)
        return state

    def error_rate(self) -> float:
        with self._lock:
            return self._rate()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "model_id": self.model_id,
                "state": self._state.value,
                "reason": self._reason,
                "error_rate": self._rate(),
                "window_frames": len(self._recent),
                "inferences": self.inferences,
                "errors": self.errors,
                "since": self._since,
            }

    # ------------------------------------------------------------- internals
    def _rate(self) -> float:
        return self._recent_errors / len(self._recent) if self._recent else 0.0

    def _push(self, ok: int, errors: int) -> None:
        total = ok + errors
        if total > self.window:  # keep the batch's proportion, not its order
            errors = round(errors * self.window / total)
            ok = self.window - errors
        for is_error, n in ((False, ok), (True, errors)):
            for _ in range(n):
                if len(self._recent) == self.window and self._recent.popleft():
                    self._recent_errors -= 1
                self._recent.append(is_error)
                self._recent_errors += is_error

    def _judge(self) -> tuple[ModelState, ModelState, str] | None:
        if self._state not in _JUDGED or len(self._recent) < self.min_samples:
            return None
        rate = self._rate()
        if rate >= self.unhealthy_rate:
            new, limit = ModelState.unhealthy, self.unhealthy_rate
        elif rate >= self.degraded_rate:
            new, limit = ModelState.degraded, self.degraded_rate
        else:
            new, limit = ModelState.ready, self.degraded_rate
        if new is self._state:
            return None
        op = "<" if new is ModelState.ready else ">="
        reason = f"error rate {rate:.3f} {op} {limit} over the last {len(self._recent)} frames"
        return self._set(new, reason)

    def _set(self, new: ModelState, reason: str) -> tuple[ModelState, ModelState, str] | None:
        """Caller holds the lock. Returns the change to notify, if any."""
        old = self._state
        if old is ModelState.failed or old is new:
            return None
        self._state, self._reason, self._since = new, reason, self._clock()
        return old, new, reason

    def _notify(self, change: tuple[ModelState, ModelState, str] | None) -> None:
        if change is None:
            return
        old, new, reason = change
        log.info(
            "model_state_changed",
            model_id=self.model_id,
            old=old.value,
            new=new.value,
            reason=reason,
        )
        if self.on_change is None:
            return
        try:
            self.on_change(self.model_id, old, new, reason)
        except Exception as exc:
            log.warning(
                "model_state_callback_failed",
                model_id=self.model_id,
                error=f"{type(exc).__name__}: {exc}",
            )
