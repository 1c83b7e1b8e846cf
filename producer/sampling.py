"""Frame sampling by timestamp: which frames of a source to keep for a target fps."""

from __future__ import annotations

import math

from framepool.errors import BadInput


class FpsSampler:
    """Chooses frames for a target fps from their timestamps alone (pure logic).

    The first frame is taken; after that a frame is taken when it reaches the
    next slot of a grid ``t0 + k / fps`` anchored at the first frame (no drift),
    and the grid then moves past it (a gap never causes a burst). Timestamps
    within a tenth of a source frame period before a slot count as on it, so a
    jittery live stream keeps its rate. A target of None, or one at or above
    the source's fps, takes every frame. Time going backwards (a stream that
    restarted) restarts the grid.
    """

    def __init__(self, target_fps: float | None) -> None:
        if target_fps is not None and not target_fps > 0:
            raise BadInput(f"fps must be > 0, got {target_fps}")
        self.target = target_fps
        self._t0: float | None = None
        self._next = -math.inf
        self._last: float | None = None

    def take(self, t: float, source_fps: float | None = None) -> bool:
        if self.target is None or (source_fps is not None and self.target >= source_fps):
            return True
        period = 1.0 / self.target
        tol = 0.1 / source_fps if source_fps else 1e-6
        if self._t0 is None or (self._last is not None and t + tol < self._last):
            self._t0, self._next = t, t  # first frame, or time went backwards
        self._last = t
        if t + tol < self._next:
            return False
        assert self._t0 is not None
        slots = math.floor((t + tol - self._t0) / period) + 1
        self._next = self._t0 + slots * period
        return True
