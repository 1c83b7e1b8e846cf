"""Frame codec: judge a frame from its header, decode it, encode arrays.

The producer calls :func:`probe` only (no full decode: a 20000x20000 PNG bomb
is refused from its 24-byte header). The worker calls :func:`decode`, which
checks the same limits again before decoding.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image

from framepool.errors import BadFrame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"  # start of image, and the first marker's 0xFF
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}


@dataclass(frozen=True, slots=True)
class FrameInfo:
    format: Literal["jpeg", "png"]
    width: int
    height: int
    size: int

    def describe(self) -> str:
        """Compact form for Celery's argsrepr: ``jpeg 48KB 640x480``."""
        return f"{self.format} {max(1, round(self.size / 1024))}KB {self.width}x{self.height}"


def _jpeg_dimensions(data: bytes) -> tuple[int, int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise BadFrame("not a valid JPEG: marker expected")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9 or marker == 0xDA:  # EOI or SOS before any SOF
            break
        if i + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, i)
        if marker in _SOF:
            if i + 8 > n:
                break
            height, width = struct.unpack_from(">HH", data, i + 3)
            components = data[i + 7]
            return width, height, components
        i += length
    raise BadFrame("not a valid JPEG: no frame header (SOF) found")


def probe(data: bytes, *, max_bytes: int, max_pixels: int) -> FrameInfo:
    """Identify a JPEG/PNG from its header and check size limits, without decoding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadFrame(f"frame must be bytes, got {type(data).__name__}")
    data = bytes(data) if not isinstance(data, bytes) else data
    size = len(data)
    if size == 0:
        raise BadFrame("frame is empty")
    if size > max_bytes:
        raise BadFrame(f"frame is {size} bytes, over the {max_bytes}-byte limit")
    fmt: Literal["jpeg", "png"]
    if data[:3] == JPEG_SOI:
        fmt = "jpeg"
        width, height, components = _jpeg_dimensions(data)
        if components not in (1, 3):
            raise BadFrame(f"JPEG with {components} colour components is not supported")
    elif data[:8] == PNG_SIGNATURE:
        fmt = "png"
        if size < 24 or data[12:16] != b"IHDR":
            raise BadFrame("not a valid PNG: IHDR chunk missing")
        width, height = struct.unpack_from(">II", data, 16)
    else:
        raise BadFrame("frame is not a JPEG or PNG image (unrecognised header)")
    if width <= 0 or height <= 0:
        raise BadFrame(f"image has invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise BadFrame(
            f"image is {width}x{height} = {width * height} pixels, over the "
            f"{max_pixels}-pixel limit"
        )
    return FrameInfo(fmt, width, height, size)


def decode(
    data: bytes, *, max_bytes: int, max_pixels: int, min_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a JPEG/PNG into an HxWx3 uint8 RGB array, or raise BadFrame.

    ``min_size`` (width, height) lets a JPEG decode at a reduced DCT scale
    (1/2, 1/4, 1/8) as long as the result is at least that large: a model that
    sees 224x224 need not pay for a full 1920x1080 decode.
    """
    info = probe(data, max_bytes=max_bytes, max_pixels=max_pixels)
    scaled = False
    try:
        if info.format == "jpeg":
            extra = {}
            if min_size is not None and (min_size[0] < info.width or min_size[1] < info.height):
                extra = {"min_width": min_size[0], "min_height": min_size[1]}
                scaled = True
            image = simplejpeg.decode_jpeg(
                data, colorspace="RGB", fastdct=True, fastupsample=True, **extra
            )
        else:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:
                    raise BadFrame(f"image is {im.width}x{im.height}, over the pixel limit")
                image = np.asarray(im.convert("RGB"))
    except BadFrame:
        raise
    except Exception as exc:  # libjpeg-turbo / Pillow say why in their message
        raise BadFrame(f"cannot decode {info.format}: {exc}") from exc
    if not scaled and image.shape[:2] != (info.height, info.width):
        raise BadFrame(
            f"decoded size {image.shape[1]}x{image.shape[0]} differs from header "
            f"{info.width}x{info.height}"
        )
    return image


def check_array(frame: np.ndarray, *, max_pixels: int) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise BadFrame(f"array frame must be HxWx3, got shape {tuple(frame.shape)}")
    if frame.dtype != np.uint8:
        raise BadFrame(f"array frame must be uint8, got {frame.dtype}")
    h, w = frame.shape[:2]
    if h == 0 or w == 0:
        raise BadFrame("array frame is empty")
    if h * w > max_pixels:
        raise BadFrame(f"array frame is {w}x{h}, over the {max_pixels}-pixel limit")


def encode_jpeg(frame: np.ndarray, *, quality: int = 90, max_pixels: int = 1 << 62) -> bytes:
    """Encode an HxWx3 uint8 RGB array as JPEG (libjpeg-turbo)."""
    check_array(frame, max_pixels=max_pixels)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality, colorspace="RGB")
