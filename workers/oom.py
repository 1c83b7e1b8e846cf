"""Out-of-memory and sticky CUDA errors: telling them apart, and a batch cap.

- :func:`is_oom`: the batch was too big; retry it smaller (see :class:`BatchCap`).
- :func:`is_sticky_cuda_error`: the CUDA context is unusable (illegal access,
  device-side assert, lost GPU); the worker process must exit so its frames
  are redelivered to a healthy one. Nothing on this device can be retried.

Both follow explicit chaining (``raise ModelError(...) from exc``), so a
wrapped error is classified by its cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from framepool.errors import DeviceLost, GpuOutOfMemory

_OOM_MESSAGES = ("cuda out of memory", "out of memory")
_STICKY_MESSAGES = (
    "illegal memory access",
    "an illegal instruction",
    "device-side assert triggered",
    "unspecified launch failure",
    "cuda error: misaligned address",
    "gpu is lost",
    "uncorrectable ecc error",
    "cuda-capable device(s) is/are busy or unavailable",
)
_MAX_CHAIN = 8


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its explicit causes (``from``), without looping."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__


def _torch_types(*names: str) -> tuple[type[BaseException], ...]:
    """The torch exception classes among ``names`` that this torch has."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a worker dependency
        return ()
    found: list[type[BaseException]] = []
    for name in names:
        obj: Any = torch
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            found.append(obj)
    return tuple(found)


def _runtime_message(exc: BaseException) -> str | None:
    """The lower-cased message of a RuntimeError (torch.AcceleratorError is one)."""
    types: tuple[type[BaseException], ...] = (RuntimeError, *_torch_types("AcceleratorError"))
    if isinstance(exc, types):
        return str(exc).lower()
    return None


def is_oom(exc: BaseException) -> bool:
    """True for a GPU out-of-memory error, which a smaller batch may avoid."""
    oom_types: tuple[type[BaseException], ...] = (
        GpuOutOfMemory,
        *_torch_types("cuda.OutOfMemoryError", "OutOfMemoryError"),
    )
    for e in _chain(exc):
        if isinstance(e, oom_types):
            return True
        msg = _runtime_message(e)
        if msg is not None and any(m in msg for m in _OOM_MESSAGES):
            return True
    return False


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """True when the CUDA context is unusable and the process must exit."""
    for e in _chain(exc):
        if isinstance(e, DeviceLost):
            return True
        msg = _runtime_message(e)
        if msg is not None and any(m in msg for m in _STICKY_MESSAGES):
            return True
    return False


class BatchCap:
    """The largest batch this model may run now, lowered by OOMs, raised by success.

    ``on_oom`` halves the cap to half the batch that failed (never below 1);
    after ``grow_after`` consecutive successful batches *at* the cap it doubles
    again (never above ``limit``). Smaller batches prove nothing about the cap:
    they neither count nor reset the streak.

    Not thread-safe: one runner thread owns it.
    """

    def __init__(
        self, limit: int, grow_after: int = 20, clock: Callable[[], float] = time.time
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if grow_after < 1:
            raise ValueError("grow_after must be >= 1")
        self.limit = limit
        self.grow_after = grow_after
        self.current = limit
        self.ooms = 0
        self.last_oom_at: float | None = None
        self._streak = 0
        self._clock = clock

    def on_oom(self, batch_size: int) -> int:
        """A batch of ``batch_size`` ran out of memory; returns the new cap."""
        self.ooms += 1
        self.last_oom_at = self._clock()
        self.current = min(self.limit, max(1, batch_size // 2))
        self._streak = 0
        return self.current

    def on_success(self, batch_size: int) -> int:
        """A batch of ``batch_size`` succeeded; returns the (maybe raised) cap."""
        if batch_size >= self.current and self.current < self.limit:
            self._streak += 1
            if self._streak >= self.grow_after:
                self.current = min(self.limit, self.current * 2)
                self._streak = 0
        return self.current

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "current": self.current,
            "ooms": self.ooms,
            "last_oom_at": self.last_oom_at,
        }
