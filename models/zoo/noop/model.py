"""A model that does no work: measures the pipeline's own overhead."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.base import Model


class Noop(Model):
    """Ignores the pixels; one empty output dict per frame."""

    def load(self) -> None:
        pass

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return np.zeros((1, 1, 1), dtype=np.float32)

    def infer(self, batch: torch.Tensor) -> None:
        return None

    def postprocess(self, raw: Any, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        return [{} for _ in sizes]
