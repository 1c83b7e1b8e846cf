"""Shape detector: finds the synthetic camera's circles, squares and triangles.

A tiny CenterNet-style network (``models.nets.shapenet``) trained by
``train.py`` in this folder on ``SyntheticCamera`` frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.base import Model
from models.image import normalise_chw
from models.image import resize_rgb as resize  # train.py resizes as serving does
from models.nets.shapenet import ShapeNet, decode, fuse_batchnorm

SCORE_THRESHOLD = 0.3
PIXEL_MEAN, PIXEL_SCALE = 127.5, 64.0  # input = (pixel - mean) / scale


def to_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 of any size -> float32 3xHxW network input at ``size``."""
    return normalise_chw(resize(image, size), PIXEL_MEAN, 1.0 / PIXEL_SCALE)


class ShapeDetector(Model):
    """Boxes in the original frame's pixels: ``{"detections": [{label, score, box}]}``."""

    net: ShapeNet

    def load(self) -> None:
        path = self.manifest.weights_path
        if path is None:
            raise RuntimeError(f"{self.id}: the manifest names no weights file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        with torch.device("meta"):  # the weights come from the file: skip default init
            net = ShapeNet(num_classes=len(self.manifest.labels))
        net.load_state_dict(state, assign=True)
        self.net = self.place(fuse_batchnorm(net.eval()))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        w, h = self.manifest.input_size
        return to_input(image, (w, h))

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)

    def postprocess(self, raw: torch.Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        labels = self.manifest.labels
        frames = decode(raw.cpu(), sizes, len(labels), threshold=SCORE_THRESHOLD)
        return [
            {
                "detections": [
                    {"label": labels[d.label_index], "score": d.score, "box": list(d.box)}
                    for d in dets
                ]
            }
            for dets in frames
        ]
