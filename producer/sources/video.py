"""Video files and network streams (RTSP, HTTP, TCP, ...) through PyAV.

A *file* is read once: its end ends the iteration. A *live* URL that drops
(network error, read timeout, or end of stream) is reopened with exponential
backoff, capped, until :meth:`VideoSource.close`: ``source_disconnected`` is
logged once per drop, ``source_reconnect_failed`` per failed attempt and
``source_reconnected`` (with the attempt count and the downtime) when frames
flow again. ``seq`` keeps growing across reconnects.

``captured_at`` is ``anchor + (pts - start_pts) * time_base``. The anchor is
the stream's own wall-clock start where it has one (RTSP's RTCP time,
``start_time_realtime``; a file's ``creation_time`` tag), else the wall clock
when the file was opened or the first frame of a (re)connection arrived.

The first open must succeed: a wrong path or URL fails at once with
``BadInput``; only a stream that has worked is retried.

Frames come as RGB arrays, except from an MJPEG stream (IP cameras over HTTP,
webcams): each of its frames is already a JPEG and is passed on as its bytes,
not decoded and re-encoded, when it carries its own Huffman tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from fractions import Fraction
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import av
import av.container
import av.video
import numpy as np

from framepool.errors import BadInput
from framepool.log import get_logger
from producer.sources.base import Backoff, SourceFrame, Stoppable, redact_url

log = get_logger(__name__)

#: schemes whose end of stream is a drop to reconnect, not the end of the source
LIVE_SCHEMES = frozenset(
    {"rtsp", "rtsps", "rtmp", "rtmps", "tcp", "udp", "rtp", "srt", "http", "https"}
)
#: an http(s) URL whose path ends like this is a file served over HTTP: read once
FILE_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".flv", ".ts", ".mpg"})
#: short probing for live streams: start in about a second, not after FFmpeg's default 5 s
_LIVE_OPTIONS = {"analyzeduration": "1000000", "probesize": "1000000"}
_ERRORS = (av.FFmpegError, OSError)


def is_live_url(url: str) -> bool:
    """True for stream URLs (reconnect on drop), False for local paths and http(s) files."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in LIVE_SCHEMES:
        return False
    if scheme in ("http", "https"):
        return PurePosixPath(urlsplit(url).path).suffix.lower() not in FILE_SUFFIXES
    return True


def stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's frame rate from its header, or None when it declares none."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            value = float(rate)
            if 0 < value < 1000:  # 90000 (a time base) is not a frame rate
                return value
    return None


def _creation_time(container: av.container.InputContainer) -> float | None:
    raw = container.metadata.get("creation_time")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class VideoSource(Stoppable):
    """Frames of a video file or stream, decoded to RGB arrays."""

    def __init__(
        self,
        url: str,
        camera_id: str,
        *,
        live: bool | None = None,
        format: str | None = None,
        options: dict[str, str] | None = None,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 10.0,
        jpeg_passthrough: bool = True,
    ) -> None:
        super().__init__()
        self.jpeg_passthrough = jpeg_passthrough
        self.url = url
        self.camera_id = camera_id
        self.live = is_live_url(url) if live is None else live
        self.format = format
        self.options = {**(_LIVE_OPTIONS if self.live else {}), **(options or {})}
        if urlsplit(url).scheme.lower() in ("rtsp", "rtsps"):
            self.options.setdefault("rtsp_transport", "tcp")
        self.timeout = (open_timeout, read_timeout)
        self.backoff = Backoff(reconnect_initial, reconnect_max)
        self.fps: float | None = None
        self.reconnects = 0
        self.decode_errors = 0
        self._seq = 0
        self._last_at: float | None = None
        self._iterating = False
        try:
            self._container: av.container.InputContainer | None = self._connect()
        except _ERRORS as exc:
            raise BadInput(f"cannot open video source {self.name}: {self._say(exc)}") from exc

    @property
    def name(self) -> str:
        return redact_url(self.url)

    def _say(self, exc: BaseException) -> str:
        """The error's message; FFmpeg's name the URL, so its password is masked."""
        return str(exc).replace(self.url, self.name)

    def __repr__(self) -> str:
        return f"<VideoSource {self.name} cam={self.camera_id} live={self.live}>"

    # ------------------------------------------------------------------ reading
    def __iter__(self) -> Iterator[SourceFrame]:
        self._iterating = True
        try:
            while not self.stopped:
                if self._container is None and not self.live:
                    return  # a file is read once
                container = self._container or self._reconnect()
                if container is None:  # closed while reconnecting
                    return
                error: BaseException | None = None
                try:
                    yield from self._frames(container)
                except _ERRORS as exc:  # network drop, read timeout, I/O error
                    error = exc
                finally:
                    self._drop_container()
                if self.stopped:
                    return
                if not self.live:
                    if error is not None:
                        log.warning(
                            "source_read_failed",
                            camera_id=self.camera_id,
                            source=self.name,
                            error=self._say(error),
                        )
                    return
                log.warning(
                    "source_disconnected",
                    camera_id=self.camera_id,
                    source=self.name,
                    error=self._say(error) if error else "end of stream",
                    frames=self._seq,
                    reconnects=self.reconnects,
                )
        finally:
            self._drop_container()
            self._iterating = False

    def close(self) -> None:
        """Stop at the next frame; the reading thread releases the stream (or this call,
        when none is reading)."""
        super().close()
        if not self._iterating:
            self._drop_container()

    def _connect(self) -> av.container.InputContainer:
        container = av.open(
            self.url, format=self.format, options=self.options, timeout=self.timeout
        )
        if not container.streams.video:
            container.close()
            raise BadInput(f"{self.name} has no video stream")
        stream = container.streams.video[0]
        self.fps = stream_fps(stream) or self.fps
        return container

    def _reconnect(self) -> av.container.InputContainer | None:
        # the backoff is reset by the first frame of a connection: one that drops
        # again before any frame (a flapping camera) keeps backing off
        down_since = time.monotonic()
        while True:
            delay = self.backoff.next()
            if self._sleep(delay):
                return None
            try:
                container = self._connect()
            except (*_ERRORS, BadInput) as exc:
                log.info(
                    "source_reconnect_failed",
                    camera_id=self.camera_id,
                    source=self.name,
                    attempt=self.backoff.attempts,
                    error=self._say(exc),
                    retry_in_s=min(self.backoff.cap, delay * self.backoff.factor),
                )
                continue
            self.reconnects += 1
            log.info(
                "source_reconnected",
                camera_id=self.camera_id,
                source=self.name,
                attempts=self.backoff.attempts,
                downtime_s=round(time.monotonic() - down_since, 3),
                reconnects=self.reconnects,
            )
            return container

    def _drop_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()

    def _frames(self, container: av.container.InputContainer) -> Iterator[SourceFrame]:
        stream = container.streams.video[0]
        if not self.live:
            stream.thread_type = "AUTO"  # frame threads: throughput over latency
        stamp = self._stamper(container, stream)
        mjpeg = self.jpeg_passthrough and stream.codec_context.name == "mjpeg"
        for packet in container.demux(stream):
            if self.stopped:
                return
            if mjpeg and packet.size:
                data = bytes(packet)
                if is_complete_jpeg(data):  # an MJPEG frame is a JPEG: sent as it is
                    yield self._emit(stamp(packet.pts), data)
                    continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:  # a corrupt packet: skip it, keep going
                self.decode_errors += 1
                log.warning(
                    "frame_decode_failed", camera_id=self.camera_id, seq=self._seq, error=str(exc)
                )
                continue
            for frame in frames:
                yield self._emit(stamp(frame.pts), frame.to_ndarray(format="rgb24"))

    def _emit(self, at: float, image: np.ndarray | bytes) -> SourceFrame:
        if self.backoff.attempts:
            self.backoff.reset()  # frames flow: the next drop starts from the shortest wait
        seq, self._seq = self._seq, self._seq + 1
        return SourceFrame(self.camera_id, seq, at, image, self.fps)

    def _stamper(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Callable[[int | None], float]:
        """``captured_at`` for this connection's pts: ``anchor + (pts - start_pts) * time_base``."""
        tb = stream.time_base or Fraction(1, 90_000)
        realtime = getattr(container, "start_time_realtime", None)
        anchor: float | None
        if realtime is not None and realtime > 0:  # µs since the epoch at its start (RTSP/RTCP)
            anchor = realtime / 1e6
        elif not self.live:
            anchor = _creation_time(container) or time.time()
        else:
            anchor = None  # the wall clock when the first frame arrives
        start_pts = stream.start_time

        def stamp(pts: int | None) -> float:
            nonlocal anchor, start_pts
            if pts is None:  # no timestamp: one frame period after the last
                step = 1.0 / self.fps if self.fps else 0.0
                at = self._last_at + step if self._last_at is not None else time.time()
            else:
                start_pts = pts if start_pts is None else start_pts
                anchor = time.time() if anchor is None else anchor
                at = anchor + float((pts - start_pts) * tb)
            self._last_at = at
            return at

        return stamp


def is_complete_jpeg(data: bytes) -> bool:
    """A JPEG with its own Huffman tables (many webcams' MJPEG frames leave them out)."""
    sos = data.find(b"\xff\xda")
    return data[:3] == b"\xff\xd8\xff" and 0 <= data.find(b"\xff\xc4") < sos
