"""A folder of images as a camera: files in natural order (``f2`` before ``f10``).

JPEG and PNG files are passed on as their bytes, not decoded and re-encoded;
other image formats Pillow reads (BMP, TIFF, WebP, ...) are decoded to RGB
arrays. ``captured_at`` is ``start + seq / fps`` when an ``fps`` is given, else
the file's modification time. A file that cannot be read or decoded is logged
(``frame_decode_failed``), counted in ``decode_errors`` and skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from framepool.codec import PNG_SIGNATURE
from framepool.errors import BadInput
from framepool.log import get_logger
from producer.sources.base import SourceFrame, Stoppable

log = get_logger(__name__)

#: files sent as they are
PASSTHROUGH_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
IMAGE_SUFFIXES = PASSTHROUGH_SUFFIXES | {".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_JPEG_SOI = b"\xff\xd8\xff"


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    parts = re.split(r"(\d+)", path.name)
    return [(0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts if p]


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, in natural order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


class FolderSource(Stoppable):
    """Images from a folder (or an explicit list of files), one frame each."""

    live = False

    def __init__(
        self,
        path: str | Path,
        camera_id: str,
        *,
        fps: float | None = None,
        files: Sequence[Path] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.camera_id = camera_id
        if fps is not None and not fps > 0:
            raise BadInput(f"folder fps must be > 0, got {fps}")
        self.fps = fps
        if files is None:
            if not self.path.is_dir():
                raise BadInput(f"{self.path} is not a folder")
            files = list_images(self.path)
        self.files = list(files)
        if not self.files:
            raise BadInput(
                f"no images in {self.path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self.decode_errors = 0

    @property
    def name(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"<FolderSource {self.path} cam={self.camera_id} files={len(self.files)}>"

    def __iter__(self) -> Iterator[SourceFrame]:
        start = time.time()
        for seq, file in enumerate(self.files):
            if self.stopped:
                return
            try:
                image = self._load(file)
                at = start + seq / self.fps if self.fps else file.stat().st_mtime
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                self.decode_errors += 1
                log.warning(
                    "frame_decode_failed",
                    camera_id=self.camera_id,
                    seq=seq,
                    file=str(file),
                    error=str(exc),
                )
                continue
            yield SourceFrame(self.camera_id, seq, at, image, self.fps)

    @staticmethod
    def _load(file: Path) -> np.ndarray | bytes:
        data = file.read_bytes()
        if data[:3] == _JPEG_SOI or data[:8] == PNG_SIGNATURE:
            return data  # checked (header, limits) before enqueue; never re-encoded
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))
