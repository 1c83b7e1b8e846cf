"""A V4L2 capture device (``/dev/videoN``) through PyAV's ``v4l2`` input format.

A device that is missing, is not a character device, or a PyAV build without
the ``v4l2`` format gives ``BadInput`` with a clear message. A device that
stops delivering (unplugged, read timeout) is reopened with backoff, as any
live :class:`~producer.sources.video.VideoSource` is.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import av

from framepool.errors import BadInput
from producer.sources.video import VideoSource


class V4L2Source(VideoSource):
    """Frames from ``/dev/videoN``; ``fps`` and ``size`` (``"640x480"``) ask the driver."""

    def __init__(
        self,
        device: str,
        camera_id: str,
        *,
        fps: float | None = None,
        size: str | None = None,
        input_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        path = Path(device)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise BadInput(f"V4L2 device {device} does not exist") from None
        except OSError as exc:
            raise BadInput(f"cannot access V4L2 device {device}: {exc.strerror}") from exc
        if not stat.S_ISCHR(mode):
            raise BadInput(f"{device} is not a video device (not a character device)")
        if "v4l2" not in av.formats_available:
            raise BadInput(
                "this PyAV build has no v4l2 input format; use an FFmpeg with v4l2 "
                "(e.g. a stream from the device: ffmpeg -f v4l2 -i /dev/video0 -f mpegts tcp://…)"
            )
        options: dict[str, str] = {}
        if fps:
            options["framerate"] = f"{fps:g}"
        if size:
            options["video_size"] = size
        if input_format:
            options["input_format"] = input_format  # e.g. mjpeg, yuyv422
        super().__init__(device, camera_id, live=True, format="v4l2", options=options, **kwargs)
