"""Camera ingest sources: the :class:`FrameSource` protocol and :func:`open_source`.

======================================  =========================================
spec                                     source
======================================  =========================================
``synthetic`` / ``synthetic?fps=25&…``   :class:`SyntheticSource` (paced, endless)
a video file                             :class:`~producer.sources.video.VideoSource`
a folder (or one JPEG/PNG file)          :class:`~producer.sources.folder.FolderSource`
``rtsp://`` ``http(s)://`` ``tcp://`` …  live ``VideoSource`` (reconnects)
``/dev/videoN``                          :class:`~producer.sources.v4l2.V4L2Source`
======================================  =========================================

The video modules import PyAV, so they are imported only when a spec needs them.
"""

from __future__ import annotations

import stat
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from framepool.errors import BadInput
from producer.sources.base import Backoff, FrameSource, SourceFrame, redact_url
from producer.sources.synthetic import SyntheticCamera, SyntheticSource

__all__ = [
    "Backoff",
    "FrameSource",
    "SourceFrame",
    "SyntheticCamera",
    "SyntheticSource",
    "open_source",
    "redact_url",
]

#: URL schemes read by PyAV as network streams
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "udp", "srt")
_SYNTHETIC_PARAMS: dict[str, Callable[[str], Any]] = {
    "width": int,
    "height": int,
    "fps": float,
    "shapes": int,
    "seed": int,
    "start": int,
    "realtime": lambda v: v.lower() in ("1", "true", "yes", "on"),
}
_EXPECTED = (
    "expected synthetic, a video file, an image folder, rtsp://…, http(s)://…, tcp://… "
    "or /dev/videoN"
)


def open_source(
    spec: str, camera_id: str, *, count: int | None = None, **options: Any
) -> FrameSource:
    """Open the source ``spec`` for ``camera_id``; ``BadInput`` says why one cannot be opened.

    ``count`` bounds a synthetic camera; ``options`` go to the source's
    constructor (``VideoSource``'s timeouts and reconnect backoff, a folder's
    ``fps`` ...).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise BadInput(f"empty source; {_EXPECTED}")
    if not camera_id:
        raise BadInput("a source needs a camera id")
    spec = spec.strip()
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if spec == "synthetic" or spec.startswith("synthetic?"):
        return _synthetic(parts.query, camera_id, count)
    if scheme in STREAM_SCHEMES:
        if not parts.netloc:
            raise BadInput(f"source {redact_url(spec)!r} has no host")
        from producer.sources.video import VideoSource

        return VideoSource(spec, camera_id, **options)
    if len(scheme) > 1 and "://" in spec:  # one letter would be a Windows drive
        raise BadInput(
            f"unsupported source scheme {scheme}:// in {redact_url(spec)!r}; {_EXPECTED}"
        )
    path = Path(spec).expanduser()
    if spec.startswith("/dev/video") or (path.exists() and stat.S_ISCHR(path.stat().st_mode)):
        from producer.sources.v4l2 import V4L2Source  # also /dev/v4l/by-id/… links

        return V4L2Source(spec, camera_id, **options)
    if path.is_dir():
        from producer.sources.folder import FolderSource

        return FolderSource(path, camera_id, **options)
    if path.is_file():
        from producer.sources.folder import PASSTHROUGH_SUFFIXES, FolderSource

        if path.suffix.lower() in PASSTHROUGH_SUFFIXES:
            return FolderSource(path, camera_id, files=[path], **options)
        from producer.sources.video import VideoSource

        return VideoSource(str(path), camera_id, live=False, **options)
    if path.exists():
        raise BadInput(f"source {spec!r} is neither a file nor a folder")
    raise BadInput(f"source {spec!r} not found (no such file or folder); {_EXPECTED}")


def _synthetic(query: str, camera_id: str, count: int | None) -> SyntheticSource:
    args: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        convert = _SYNTHETIC_PARAMS.get(key)
        if convert is None:
            known = ", ".join(_SYNTHETIC_PARAMS)
            raise BadInput(f"unknown synthetic parameter {key!r}; known: {known}")
        try:
            args[key] = convert(value)
        except ValueError:
            raise BadInput(f"synthetic parameter {key}={value!r} is not a number") from None
    realtime = args.pop("realtime", True)
    start = args.pop("start", 0)
    # each camera its own scene unless a seed is given: the same id, the same frames
    seed = args.pop("seed", zlib.crc32(camera_id.encode()) & 0x7FFFFFFF)
    try:
        camera = SyntheticCamera(
            camera_id,
            width=args.get("width", 640),
            height=args.get("height", 480),
            fps=args.get("fps", 10.0),
            n_shapes=args.get("shapes", 3),
            seed=seed,
        )
        return SyntheticSource(camera, count=count, start=start, realtime=realtime)
    except ValueError as exc:
        raise BadInput(f"synthetic source: {exc}") from exc
