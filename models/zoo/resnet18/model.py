"""ResNet-18 ImageNet-style classifier (deterministic weights, no download)."""

from __future__ import annotations

from models.imagenet import ImageNetClassifier


class ResNet18(ImageNetClassifier):
    depth = 18
