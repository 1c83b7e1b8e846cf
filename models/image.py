"""The per-frame image work of the zoo's models, on the host: resize and normalise.

Both run in the worker's pool threads, once per frame, beside the model's forward
pass, so each is written for the least CPU:

- :func:`resize_rgb` is torch's antialiased bilinear on uint8 (its AVX2 kernel),
  which matches Pillow's ``BILINEAR`` resize to within one level (bit for bit at
  a 320x240 -> 224x224 reduce), in a third of its time;
- :func:`normalise_chw` writes ``(pixel - mean) * (1 / std)`` as float32 CxHxW in
  one pass per operation over contiguous rows; broadcasting over the last axis of
  an HxWx3 array and then transposing took six times as long.

docs/benchmarks.md (``python -m benchmarks.preprocess``) has the figures.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> HxWx3 uint8 at ``size`` (width, height), bilinear and
    antialiased as Pillow's; the frame itself when it has that size already."""
    w, h = size
    if image.shape[:2] == (h, w):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def normalise_chw(
    image: np.ndarray, mean: np.ndarray | float, scale: np.ndarray | float
) -> np.ndarray:
    """HxWx3 uint8 -> float32 3xHxW ``(pixel - mean) * scale``, per channel when
    ``mean`` and ``scale`` have 3 values."""
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    chw = image.transpose(2, 0, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(scale, dtype=np.float32).reshape(-1, 1, 1)
    np.subtract(chw, m, out=out, dtype=np.float32)
    np.multiply(out, s, out=out)
    return out
