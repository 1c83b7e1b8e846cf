"""The interface every model in the zoo implements.

The worker calls, for each frame, ``preprocess`` (in the frame's own thread,
so decode and preprocess of many frames overlap the model), then for each
batch ``infer`` on the stacked inputs and ``postprocess`` to get one output
dict per frame. Models know nothing of Celery or Redis.

Precision: the manifest's ``precision`` (fp32, fp16, bf16) applies on a CUDA
device; a model builds its network with :meth:`Model.place` (weights in that
dtype, channels-last on CUDA, and on a CPU where :attr:`Model.cpu_channels_last`
says so) and the worker moves each batch with :meth:`Model.to_device` (the same
dtype and layout). A CPU always runs fp32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from framepool.manifest import ModelManifest

NetT = TypeVar("NetT", bound=torch.nn.Module)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a model runs in on ``device``: as asked on CUDA, fp32 on a CPU."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(DTYPES)}")
    return precision if device.type == "cuda" else "fp32"


class Model(ABC):
    """A loaded model on one device."""

    #: channels-last (NHWC) weights and batches on a CPU as well as on CUDA: oneDNN's
    #: convolutions are faster so (resnet18: 0.67x the time at batch 8); a model
    #: whose network is mostly convolutions sets it
    cpu_channels_last: bool = False

    def __init__(
        self, manifest: ModelManifest, device: str = "cpu", precision: str | None = None
    ) -> None:
        self.manifest = manifest
        self.device = torch.device(device)
        #: what it runs in: ``precision`` (else the manifest's) on CUDA, fp32 on a CPU
        self.precision = effective_precision(precision or manifest.precision, self.device)
        self.dtype = DTYPES[self.precision]
        #: set by a model that decodes JPEG itself, on its device (:attr:`accepts_jpeg`):
        #: CPU uint8 tensors of JPEG bytes -> CxHxW uint8 RGB images on ``self.device``
        self.jpeg_decoder: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None

    @property
    def accepts_jpeg(self) -> bool:
        """Whether :meth:`collate` and :meth:`to_device` take a frame's JPEG bytes
        (a 1-D uint8 array) in place of :meth:`preprocess`'s output."""
        return self.jpeg_decoder is not None

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def channels_last(self) -> bool:
        """Whether its weights and batches are channels-last (NHWC) on its device."""
        return self.device.type == "cuda" or (self.device.type == "cpu" and self.cpu_channels_last)

    def place(self, net: NetT) -> NetT:
        """``net`` on this model's device in its dtype (and layout, :attr:`channels_last`),
        in eval mode."""
        net.to(self.device, self.dtype)  # Module.to moves in place
        if self.channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return net.eval()

    def collate(self, inputs: Sequence[np.ndarray]) -> Any:
        """One batch of host inputs for :meth:`to_device`: stacked into one tensor."""
        return torch.from_numpy(np.stack(inputs))

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A host batch on this model's device, in its dtype and layout. Non-blocking:
        from pinned memory the copy overlaps whatever the host does next."""
        x = batch.to(self.device, non_blocking=True)
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @abstractmethod
    def load(self) -> None:
        """Build the network and load weights onto ``self.device`` (see :meth:`place`)."""

    @abstractmethod
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB frame -> the host input of one frame (stacked for
        :meth:`to_device`): float32 CxHxW at ``manifest.input_size``, or anything
        smaller that the model's own :meth:`to_device` finishes on the device."""

    @abstractmethod
    def infer(self, batch: torch.Tensor) -> Any:
        """Run the network on an NxCxHxW batch from :meth:`to_device`."""

    @abstractmethod
    def postprocess(self, raw: Any, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """One output dict per frame; ``sizes`` are the frames' (width, height)."""

    def warmup(self, batch_size: int = 1) -> None:
        """Run one dummy batch so the first real frame does not pay for it."""
        w, h = self.manifest.input_size
        dummy = np.zeros((h, w, 3), dtype=np.uint8)
        x = np.stack([self.preprocess(dummy)] * batch_size)
        with torch.inference_mode():
            raw = self.infer(self.to_device(torch.from_numpy(x)))
        self.postprocess(raw, [(w, h)] * batch_size)
