"""JPEG decoding on a CUDA device: torchvision's batched nvJPEG, where it can run.

A model that decodes its frames on the GPU sets ``Model.jpeg_decoder`` to what
:func:`nvjpeg_decoder` returns; the worker then hands it the frames' JPEG bytes
instead of decoding them on the CPU (``GPU_JPEG_DECODE``). torchvision is an
optional dependency: without it, or without a GPU that nvJPEG runs on, the
frames are decoded on the CPU as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from framepool.log import get_logger

log = get_logger(__name__)

JpegDecoder = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def nvjpeg_decoder(device: torch.device) -> JpegDecoder | None:
    """CPU uint8 tensors of JPEG bytes -> CxHxW uint8 RGB images on ``device``, in one
    batched call; ``None`` when ``device`` is not CUDA or nvJPEG cannot run there."""
    if device.type != "cuda":
        return None
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # not installed, or its C++ ops do not match this torch
        log.info("gpu_jpeg_decode_unavailable", device=str(device), reason=repr(exc))
        return None

    def decode(frames: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(decode_jpeg(frames, mode=ImageReadMode.RGB, device=device))

    from framepool.codec import encode_jpeg

    tiny = encode_jpeg(np.full((16, 16, 3), 128, np.uint8))
    try:  # the ops load and nvJPEG runs on this GPU
        (image,) = decode([torch.frombuffer(bytearray(tiny), dtype=torch.uint8)])
        if tuple(image.shape) != (3, 16, 16):
            raise RuntimeError(f"decoded a 16x16 JPEG to shape {tuple(image.shape)}")
    except Exception as exc:
        log.info("gpu_jpeg_decode_unavailable", device=str(device), reason=repr(exc))
        return None
    return decode
