"""The interface every model in the zoo implements.

The worker calls, for each frame, ``preprocess`` (in the frame's own thread,
so decode and preprocess of many frames overlap the model), then for each
batch ``infer`` on the stacked inputs and ``postprocess`` to get one output
dict per frame. Models know nothing of Celery or Redis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from framepool.manifest import ModelManifest


class Model(ABC):
    """A loaded model on one device."""

    def __init__(self, manifest: ModelManifest, device: str = "cpu") -> None:
        self.manifest = manifest
        self.device = torch.device(device)

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    @abstractmethod
    def load(self) -> None:
        """Build the network and load weights onto ``self.device``."""

    @abstractmethod
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB frame -> float32 CxHxW input at ``manifest.input_size``."""

    @abstractmethod
    def infer(self, batch: torch.Tensor) -> Any:
        """Run the network on an NxCxHxW batch already on ``self.device``."""

    @abstractmethod
    def postprocess(self, raw: Any, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """One output dict per frame; ``sizes`` are the frames' (width, height)."""

    def warmup(self, batch_size: int = 1) -> None:
        """Run one dummy batch so the first real frame does not pay for it."""
        w, h = self.manifest.input_size
        dummy = np.zeros((h, w, 3), dtype=np.uint8)
        x = np.stack([self.preprocess(dummy)] * batch_size)
        with torch.inference_mode():
            raw = self.infer(torch.from_numpy(x).to(self.device))
        self.postprocess(raw, [(w, h)] * batch_size)
