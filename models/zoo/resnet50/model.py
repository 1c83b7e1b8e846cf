"""ResNet-50 ImageNet-style classifier (deterministic weights, no download)."""

from __future__ import annotations

from models.imagenet import ImageNetClassifier


class ResNet50(ImageNetClassifier):
    depth = 50
