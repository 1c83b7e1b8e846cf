"""Camera ingest: read sources, sample at a target fps, encode, enqueue in small batches.

Threads: one *reader* per source, and one *sender*
(:class:`~producer.ingest_sender.IngestSender`). A reader blocks on its own
source (a network read, a reconnect backoff, a paced synthetic camera), so a
stalled camera never holds back the others; it samples, JPEG-encodes (in
parallel with the other readers: libjpeg-turbo and FFmpeg release the GIL)
and hands frames to a bounded queue, one for live and one for finite
sources. The sender takes whatever is queued, live frames first, up to
``batch_size`` frames from any camera, and sends them with one
``FrameProducer.submit_many`` (one Redis round trip): frames go out at once when
they come slowly (live) and in batches when they come fast (files).

Sampling is by timestamp (:class:`FpsSampler`), never by wall clock: a file is
read as fast as the pool takes it and the frames chosen are always the same
(a 25 fps, 4 s file at ``fps=5`` gives 20 frames). A target at or above the
source's own fps takes every frame.

Finite sources (files, folders) wait rather than drop: their reader blocks on
the full hand-off queue, and the sender holds their frames back while the
model's queue holds ``max_queued`` frames, so a long file never floods Redis.
Live sources drop instead. Every frame read is counted once: ``skipped`` by
the sampler, ``sent``, or ``dropped`` by reason:

- ``queue_full``: the producer refused it (``MAX_QUEUE_DEPTH``, either
  ``QUEUE_FULL_POLICY``);
- ``bad_frame``: not a valid frame (the source's decode errors included);
- ``backlog``: the sender could not keep up with a live camera;
- ``broker_unavailable``: Redis was away. The sender retries with backoff
  (``broker_unavailable`` / ``broker_reconnected`` in the log); a finite
  source's frames wait and are sent when Redis is back, a live camera's
  frames are dropped meanwhile;
- ``stopped``: read, but the ingest stopped (``duration``, Ctrl-C, a fatal
  error) before it could be handed on.

An unknown model or other bad input stops the ingest (raised by
:func:`run_ingest`); a source that fails ends only its own camera.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from framepool import codec
from framepool.errors import BadFrame, BadInput
from framepool.log import get_logger
from framepool.settings import Settings
from producer.ingest_sender import IngestSender
from producer.sampling import FpsSampler
from producer.sources.base import FrameSource

log = get_logger(__name__)


class Submitter(Protocol):
    """What ingest needs of :class:`producer.FrameProducer` (a fake in tests)."""

    settings: Settings

    def submit_many(self, items: Iterable[Mapping[str, Any]]) -> list[Any]: ...

    def queue_depth(self, model_id: str) -> int: ...


@dataclass(frozen=True)
class IngestConfig:
    model_id: str
    fps: float | None = None  # target per camera; None: every frame
    duration: float | None = None  # seconds; None: until the sources end (or stop())
    count: int | None = None  # frames read per camera; None: no limit
    deadline_ms: float | None = None
    batch_size: int = 8
    max_queued: int = 256  # finite sources wait while the model's queue holds this many
    broker_retry_max_s: float = 5.0  # cap of the backoff while Redis is away

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise BadInput(f"fps must be > 0, got {self.fps}")
        if self.duration is not None and not self.duration > 0:
            raise BadInput(f"duration must be > 0, got {self.duration}")
        if self.count is not None and self.count < 1:
            raise BadInput(f"count must be >= 1, got {self.count}")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise BadInput(f"deadline_ms must be > 0, got {self.deadline_ms}")
        if self.batch_size < 1 or self.max_queued < 1:
            raise BadInput("batch_size and max_queued must be >= 1")
        if not self.broker_retry_max_s > 0:
            raise BadInput(f"broker_retry_max_s must be > 0, got {self.broker_retry_max_s}")


@dataclass
class CameraStats:
    """One camera's counts; the reader and the sender update them under the ingest's lock."""

    source: str
    live: bool
    read: int = 0
    skipped: int = 0  # not chosen by the sampler
    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    done: bool = False
    ended_at: float | None = None  # monotonic, when its reader finished

    def as_dict(self, source: FrameSource | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "live": self.live,
            "read": self.read,
            "skipped": self.skipped,
            "sent": self.sent,
            "dropped": dict(self.dropped),
            "error": self.error,
        }
        if source is not None and hasattr(source, "reconnects"):
            d["reconnects"] = source.reconnects
        return d


class Ingest:
    """Ingest from several sources into one model's queue; see the module docstring."""

    def __init__(
        self, producer: Submitter, sources: Sequence[FrameSource], config: IngestConfig
    ) -> None:
        ids = [s.camera_id for s in sources]
        if not sources:
            raise BadInput("ingest needs at least one source")
        if len(set(ids)) != len(ids):
            raise BadInput(f"camera ids must be unique, got {', '.join(ids)}")
        self.producer, self.sources, self.config = producer, list(sources), config
        self.settings = producer.settings
        self.stats = {s.camera_id: CameraStats(s.name, s.live) for s in sources}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sender = IngestSender(producer, config, self.stats, self._lock, self._stop, self.stop)
        self.started_at: float | None = None
        self.ended_at: float | None = None

    # ------------------------------------------------------------------ public
    def stop(self) -> None:
        """Stop reading (any thread); frames already read are still sent."""
        self._stop.set()
        for s in self.sources:
            s.close()

    def run(self, on_tick: Callable[[Ingest], None] | None = None) -> dict[str, Any]:
        """Run to the end (sources done, ``duration`` up, or ``stop()``); the summary."""
        self.started_at = time.monotonic()
        log.info(
            "ingest_started",
            model_id=self.config.model_id,
            cameras=list(self.stats),
            fps=self.config.fps,
            duration=self.config.duration,
        )
        readers = [
            threading.Thread(
                target=self._read, args=(s,), name=f"ingest-{s.camera_id}", daemon=True
            )
            for s in self.sources
        ]
        sender = threading.Thread(target=self._sender.run, name="ingest-sender", daemon=True)
        for t in (*readers, sender):
            t.start()
        ends = self.started_at + self.config.duration if self.config.duration else math.inf
        cut_short = True  # by duration, Ctrl-C, a fatal error: not by the sources' own end
        try:
            while any(t.is_alive() for t in readers):
                if self._stop.is_set() or time.monotonic() >= ends:
                    break
                if on_tick is not None:
                    on_tick(self)
                time.sleep(min(0.2, max(0.0, ends - time.monotonic())))
            else:
                cut_short = False
        except KeyboardInterrupt:
            log.info("ingest_interrupted")
        finally:
            if cut_short:
                self.stop()
            try:
                self._join(readers, sender)
            except KeyboardInterrupt:  # Ctrl-C while files wait for the pool: stop waiting
                log.info("ingest_interrupted")
                self.stop()
                self._join(readers, sender)
            self.ended_at = time.monotonic()
            if on_tick is not None:
                on_tick(self)
        summary = self.summary()
        log.info("ingest_done", **{k: v for k, v in summary.items() if k != "cameras"})
        if self._sender.fatal is not None:
            raise self._sender.fatal
        return summary

    def _join(self, readers: list[threading.Thread], sender: threading.Thread) -> None:
        for t in readers:
            t.join(15.0)  # a blocked network read returns within its read timeout
        self._sender.readers_done.set()
        sender.join()
        self._sender.drain("stopped")  # handed off after a fatal error stopped the sender

    def summary(self) -> dict[str, Any]:
        """Counts so far, as a JSON-able dict (totals and per camera)."""
        now = self.ended_at or time.monotonic()
        elapsed = max(1e-9, now - self.started_at) if self.started_at is not None else 0.0
        with self._lock:
            cams = {s.camera_id: self.stats[s.camera_id].as_dict(s) for s in self.sources}
        dropped: Counter[str] = Counter()
        for c in cams.values():
            dropped.update(c["dropped"])
        sent = sum(c["sent"] for c in cams.values())
        return {
            "model_id": self.config.model_id,
            "fps": self.config.fps,
            "duration_s": round(elapsed, 3),
            "read": sum(c["read"] for c in cams.values()),
            "skipped": sum(c["skipped"] for c in cams.values()),
            "sent": sent,
            "dropped": dict(dropped),
            "rate_fps": round(sent / elapsed, 2) if elapsed else 0.0,
            "cameras": cams,
        }

    # ----------------------------------------------------------------- readers
    def _drop(self, stats: CameraStats, reason: str, n: int = 1) -> None:
        with self._lock:
            stats.dropped[reason] += n

    def _read(self, source: FrameSource) -> None:
        stats = self.stats[source.camera_id]
        sampler = FpsSampler(self.config.fps)
        count = self.config.count
        try:
            for frame in source:
                if self._stop.is_set():
                    break
                with self._lock:
                    stats.read += 1
                    chosen = sampler.take(frame.captured_at, frame.fps)
                    if not chosen:
                        stats.skipped += 1
                if chosen:
                    self._hand_off(source, stats, frame.seq, frame.captured_at, frame.image)
                if count is not None and stats.read >= count:
                    break
        except Exception as exc:  # a source's own failure ends only its camera
            stats.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "source_failed", camera_id=source.camera_id, source=source.name, error=str(exc)
            )
        finally:
            source.close()
            errors = getattr(source, "decode_errors", 0)  # read, but not a frame
            with self._lock:
                if errors:
                    stats.read += errors
                    stats.dropped["bad_frame"] += errors
                stats.done, stats.ended_at = True, time.monotonic()

    def _hand_off(
        self,
        source: FrameSource,
        stats: CameraStats,
        seq: int,
        captured_at: float,
        image: np.ndarray | bytes,
    ) -> None:
        if source.live and self._sender.broker_down.is_set():
            self._drop(stats, "broker_unavailable")
            return
        try:
            data = self._encode(image)
        except BadFrame as exc:
            self._drop(stats, "bad_frame")
            log.warning("frame_refused", camera_id=source.camera_id, seq=seq, error=str(exc))
            return
        dropped = self._sender.hand_off(source.camera_id, seq, captured_at, data, source.live)
        if dropped is not None:
            self._drop(stats, dropped)

    def _encode(self, image: np.ndarray | bytes) -> bytes:
        s = self.settings
        if isinstance(image, np.ndarray):
            return codec.encode_jpeg(image, quality=s.jpeg_quality, max_pixels=s.max_frame_pixels)
        data = bytes(image)
        codec.probe(data, max_bytes=s.max_frame_bytes, max_pixels=s.max_frame_pixels)
        return data


def run_ingest(
    producer: Submitter,
    sources: Sequence[FrameSource],
    config: IngestConfig,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Ingest until done and return the summary; ``progress`` draws a rich progress display."""
    ingest = Ingest(producer, sources, config)
    if not progress:
        return ingest.run()
    from producer.ingest_progress import ProgressView

    with ProgressView(ingest) as view:
        return ingest.run(on_tick=view.update)
