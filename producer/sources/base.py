"""What every camera ingest source yields, and the seam the ingest loop reads through.

A :class:`FrameSource` is iterated by one thread: each step gives the next
:class:`SourceFrame` (camera id, a ``seq`` that only grows, ``captured_at`` in
epoch seconds, the image, and the source's own fps when it is known). A finite
source (a file, a folder, a synthetic camera with a count) ends its iteration;
a live one goes on until :meth:`FrameSource.close` is called, which any thread
may do: the iterating thread notices it before its next frame.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import numpy as np


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One frame from a source.

    ``image`` is an HxWx3 uint8 RGB array, or JPEG/PNG bytes that go to the
    queue as they are (no re-encoding). ``captured_at`` comes from the stream's
    own timestamps where it has them (pts x time_base from an anchor), so the
    gaps between frames are the stream's, not the reader's.
    """

    camera_id: str
    seq: int
    captured_at: float
    image: np.ndarray | bytes
    fps: float | None = None


@runtime_checkable
class FrameSource(Protocol):
    """A camera: iterate it for frames; ``close()`` stops it from any thread."""

    camera_id: str
    #: a live source (stream, device, paced synthetic camera) drops frames it
    #: cannot send; a finite one (file, folder) waits instead
    live: bool

    @property
    def name(self) -> str:
        """A short, password-free description for logs and summaries."""
        ...

    def __iter__(self) -> Iterator[SourceFrame]: ...

    def close(self) -> None: ...


class Backoff:
    """Exponential delays: ``initial``, doubled each call, capped at ``cap``; ``reset()`` restarts."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0, factor: float = 2.0) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"backoff needs 0 < initial <= cap, got {initial}, {cap}")
        self.initial, self.cap, self.factor = initial, cap, factor
        self.attempts = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class Stoppable:
    """The stop flag every source shares: ``close()`` sets it, the reader checks it."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless closed first; True when closed."""
        return self._stop.wait(max(0.0, seconds))


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` → ``rtsp://user:***@host/x`` (for logs and summaries)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
