"""Shared base for ImageNet-style classifiers (the zoo's ResNets).

Subclasses set ``depth``; preprocess is a Pillow bilinear resize to the
manifest's input size and ImageNet mean/std normalisation; outputs are the
top-5 softmax classes, labelled ``class_<index>``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from models.base import Model
from models.nets.resnet import build_resnet

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
TOP_K = 5


class ImageNetClassifier(Model):
    """A ResNet with deterministic weights (no pretrained file)."""

    depth: ClassVar[int]
    seed: ClassVar[int] = 0
    num_classes: ClassVar[int] = 1000

    net: torch.nn.Module

    def load(self) -> None:
        self.net = self.place(build_resnet(self.depth, self.num_classes, self.seed))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        w, h = self.manifest.input_size
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        x = (resized.astype(np.float32) - MEAN) / STD
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)

    def postprocess(self, raw: torch.Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        k = min(TOP_K, raw.shape[1])
        scores, indices = raw.float().softmax(dim=1).topk(k, dim=1)
        scores_l, indices_l = scores.cpu().tolist(), indices.cpu().tolist()
        return [
            {
                "classes": [
                    {"label": self._label(i), "score": float(s)}
                    for i, s in zip(idx, sc, strict=True)
                ]
            }
            for idx, sc in zip(indices_l, scores_l, strict=True)
        ]

    def _label(self, index: int) -> str:
        labels = self.manifest.labels
        return labels[index] if index < len(labels) else f"class_{index}"
