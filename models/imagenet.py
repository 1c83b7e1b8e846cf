"""Shared base for ImageNet-style classifiers (the zoo's ResNets).

Subclasses set ``depth``; preprocess is a bilinear resize (as Pillow's) to the
manifest's input size and ImageNet mean/std normalisation (:mod:`models.image`);
outputs are the
top-5 softmax classes, labelled ``class_<index>``. The network serves with each
BatchNorm folded into the convolution before it (:func:`fold_batchnorm`).

On a CUDA device the normalisation runs on the GPU, a batch at a time, and
where torchvision's nvJPEG runs (:mod:`models.jpeg`) so do the JPEG decode
and the resize: the worker's task thread then only checks the frame's header.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from framepool.errors import BadFrame
from models.base import Model
from models.image import normalise_chw, resize_rgb
from models.jpeg import nvjpeg_decoder
from models.nets.resnet import build_resnet, fold_batchnorm

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
INV_STD = (1.0 / STD).astype(np.float32)
TOP_K = 5


class ImageNetClassifier(Model):
    """A ResNet with deterministic weights (no pretrained file)."""

    depth: ClassVar[int]
    seed: ClassVar[int] = 0
    cpu_channels_last = True  # docs/benchmarks.md, item 21
    num_classes: ClassVar[int] = 1000

    net: torch.nn.Module

    def load(self) -> None:
        self.net = self.place(fold_batchnorm(build_resnet(self.depth, self.num_classes, self.seed)))
        self._mean = torch.from_numpy(MEAN).to(self.device).view(1, 3, 1, 1)
        self._std = torch.from_numpy(STD).to(self.device).view(1, 3, 1, 1)
        self.jpeg_decoder = nvjpeg_decoder(self.device)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The resized frame; on CUDA (or with a :attr:`jpeg_decoder`) as uint8 HxWx3 (a
        quarter of the bytes to stack and copy; :meth:`to_device` normalises the whole
        batch on the device), else as normalised float32 CxHxW."""
        w, h = self.manifest.input_size
        resized = resize_rgb(image, (w, h))
        if self.device.type == "cuda" or self.jpeg_decoder is not None:
            return resized
        return normalise_chw(resized, MEAN, INV_STD)

    def collate(self, inputs: Sequence[np.ndarray]) -> Any:
        """Stacked, unless some inputs are JPEG bytes (:attr:`accepts_jpeg`): then a list."""
        if self.jpeg_decoder is None or all(a.ndim == 3 for a in inputs):
            return super().collate(inputs)
        return [torch.from_numpy(a) for a in inputs]

    def to_device(self, batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """A uint8 NxHxWx3 batch from :meth:`preprocess` is copied as it is and
        normalised on the device (NCHW, channels-last, the model's dtype); a float
        NxCxHxW batch is moved as :meth:`Model.to_device` does; a list from
        :meth:`collate` (JPEG bytes among resized frames) is decoded there first."""
        if isinstance(batch, list):
            return self._decode_on_device(batch)
        if batch.dtype != torch.uint8:
            return super().to_device(batch)
        if batch.dim() != 4 or batch.shape[-1] != 3:
            raise ValueError(f"a uint8 batch must be NxHxWx3, got {tuple(batch.shape)}")
        return self._normalise(batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """NxCxHxW (uint8 or float, 0-255) on the device -> the network's input."""
        x = ((x.float() - self._mean) / self._std).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _decode_on_device(self, items: list[torch.Tensor]) -> torch.Tensor:
        """JPEG bytes (1-D) decoded by :attr:`jpeg_decoder` in one call and resized as
        Pillow's bilinear does (antialiased), frames of one size together; resized
        HxWx3 frames (a PNG, decoded on the CPU) copied as they are."""
        w, h = self.manifest.input_size
        jpeg = [i for i, t in enumerate(items) if t.dim() == 1]
        images: dict[int, torch.Tensor] = {}
        if jpeg:
            if self.jpeg_decoder is None:
                raise BadFrame(f"{self.id} cannot decode JPEG on {self.device}")
            try:
                decoded = self.jpeg_decoder([items[i] for i in jpeg])
            except Exception as exc:  # a corrupt frame (the batch is split to find it)
                raise BadFrame(f"cannot decode jpeg on {self.device}: {exc}") from exc
            images.update(zip(jpeg, decoded, strict=True))
        for i, t in enumerate(items):
            if i not in images:
                images[i] = t.to(self.device, non_blocking=True).permute(2, 0, 1)
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in images.items():
            by_size[tuple(image.shape)].append(i)
        out = torch.empty((len(items), 3, h, w), device=self.device)
        for (_, ih, iw), idx in by_size.items():
            group = torch.stack([images[i] for i in idx]).float()
            if (ih, iw) != (h, w):
                group = F.interpolate(group, size=(h, w), mode="bilinear", antialias=True)
            out[idx] = group
        return self._normalise(out)

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
