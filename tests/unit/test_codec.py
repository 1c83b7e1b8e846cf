"""Frame codec: header probe without decode, limits, decode errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from framepool import codec
from framepool.errors import BadFrame

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 4_000_000}


def jpeg(w: int = 64, h: int = 48, value: int = 128) -> bytes:
    img = np.full((h, w, 3), value, np.uint8)
    img[:, : w // 2, 0] = 255
    return codec.encode_jpeg(img, quality=95)


def png(w: int = 40, h: int = 30, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color=(10, 200, 30) if mode == "RGB" else 7).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return codec.PNG_SIGNATURE + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_probe_reads_jpeg_and_png_dimensions() -> None:
    info = codec.probe(jpeg(64, 48), **LIMITS)
    assert (info.format, info.width, info.height) == ("jpeg", 64, 48)
    info = codec.probe(png(40, 30), **LIMITS)
    assert (info.format, info.width, info.height) == ("png", 40, 30)
    assert info.describe().startswith("png ") and info.describe().endswith("40x30")


def test_png_bomb_is_refused_from_its_header() -> None:
    bomb = png_header_only(20000, 20000)  # 400 Mpx; only 33 bytes exist
    with pytest.raises(BadFrame, match="pixel limit"):
        codec.probe(bomb, **LIMITS)
    with pytest.raises(BadFrame, match="pixel limit"):
        codec.decode(bomb, **LIMITS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 100, "not a JPEG or PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\0" * 8, "no frame header"),
        (codec.PNG_SIGNATURE + b"\0" * 4, "IHDR"),
    ],
)
def test_probe_refuses_what_is_not_an_image(data: bytes, message: str) -> None:
    with pytest.raises(BadFrame, match=message):
        codec.probe(data, **LIMITS)


def test_probe_refuses_oversized_payload() -> None:
    with pytest.raises(BadFrame, match="byte limit"):
        codec.probe(jpeg(), max_bytes=100, max_pixels=10**9)


def test_probe_refuses_non_bytes() -> None:
    with pytest.raises(BadFrame, match="must be bytes"):
        codec.probe("hello", **LIMITS)  # type: ignore[arg-type]


def test_decode_gives_rgb_array_of_header_size() -> None:
    img = codec.decode(jpeg(64, 48), **LIMITS)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert img[:, :20, 0].mean() > 230  # left half red channel is 255
    img = codec.decode(png(40, 30), **LIMITS)
    assert img.shape == (30, 40, 3) and tuple(img[0, 0]) == (10, 200, 30)


def test_grayscale_images_become_three_channels() -> None:
    buf = io.BytesIO()
    Image.new("L", (32, 32), 90).save(buf, "JPEG")
    assert codec.decode(buf.getvalue(), **LIMITS).shape == (32, 32, 3)
    assert codec.decode(png(16, 16, mode="L"), **LIMITS).shape == (16, 16, 3)


def test_truncated_jpeg_fails_with_a_clear_error() -> None:
    data = jpeg(64, 48)
    with pytest.raises(BadFrame, match="cannot decode jpeg"):
        codec.decode(data[: len(data) // 3] + b"\0" * 20, **LIMITS)


def test_scaled_decode_never_goes_below_min_size() -> None:
    big = jpeg(640, 480)
    img = codec.decode(big, **LIMITS, min_size=(160, 120))
    assert img.shape[1] >= 160 and img.shape[0] >= 120
    assert img.shape[1] < 640  # it did scale down
    full = codec.decode(big, **LIMITS, min_size=(640, 480))
    assert full.shape == (480, 640, 3)


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((10, 10), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_refused(arr: np.ndarray, message: str) -> None:
    with pytest.raises(BadFrame, match=message):
        codec.check_array(arr, max_pixels=10**6)


def test_encode_roundtrip_is_close() -> None:
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 256, (1, 1, 3)) * np.ones((48, 64, 1))).astype(np.uint8)
    out = codec.decode(codec.encode_jpeg(img, quality=95), **LIMITS)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 4
