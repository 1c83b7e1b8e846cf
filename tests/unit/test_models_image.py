"""``models.image``: the zoo's resize matches Pillow's bilinear, and the CxHxW
normalisation matches the plain formula."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.image import normalise_chw, resize_rgb


def _image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("src", [(320, 240), (640, 480), (200, 100), (100, 300)])
def test_resize_matches_pillows_bilinear_within_one_level(src: tuple[int, int]) -> None:
    image = _image(*src)
    got = resize_rgb(image, (224, 160))
    want = np.asarray(Image.fromarray(image).resize((224, 160), Image.Resampling.BILINEAR))
    assert got.shape == (160, 224, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_resize_of_a_frame_at_its_size_is_the_frame() -> None:
    image = _image(224, 224)
    assert resize_rgb(image, (224, 224)) is image


def test_resize_takes_a_strided_view() -> None:
    image = _image(640, 480)[::2, ::2]  # not contiguous
    want = resize_rgb(np.ascontiguousarray(image), (100, 80))
    assert np.array_equal(resize_rgb(image, (100, 80)), want)


def test_normalise_per_channel_and_by_scalars() -> None:
    image = _image(7, 5)
    mean = np.array([10.0, 20.0, 30.0], dtype=np.float32)
    scale = np.array([0.5, 0.25, 2.0], dtype=np.float32)
    got = normalise_chw(image, mean, scale)
    want = ((image.astype(np.float32) - mean) * scale).transpose(2, 0, 1)
    assert got.shape == (3, 5, 7) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-6)
    plain = (image.astype(np.float32) - 127.5).transpose(2, 0, 1) / 64
    np.testing.assert_allclose(normalise_chw(image, 127.5, 1 / 64), plain, rtol=1e-6)
