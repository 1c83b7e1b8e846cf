"""The work every system in ``framepool bench peers`` does with a batch of frames.

framepool's worker checks or decodes each JPEG (:func:`prepare`), stacks the
batch with ``model.collate``, copies it to the device (from pinned memory on a
GPU), runs ``model.infer`` under ``torch.inference_mode`` and then
``model.postprocess``. :class:`ModelService` does exactly that for a list of JPEG
bytes, so the in-process baseline, the Ray Serve deployment and the Triton
(PyTriton) model all do the same work per frame; only the serving around it
differs. Each reply carries the server-side completion stamp (for the
throughput window), the forward pass's duration and the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_ID = "resnet18"  # the model of the CPU runs (issue #7's CPU goals)
FRAME_SIZE = (640, 480)  # (width, height) of the bench frames, given to postprocess


def prepare(model: Any, data: bytes, max_bytes: int, max_pixels: int) -> Any:
    """One frame as the worker's task thread readies it: where the model decodes JPEG
    on its device (``model.accepts_jpeg``: nvJPEG), only the header is checked here and
    the bytes go on; else ``framepool.codec.decode`` (at a reduced DCT scale down to
    the model's input size) + ``model.preprocess``."""
    from framepool.codec import decode, probe

    if model.accepts_jpeg:
        import numpy as np

        probe(data, max_bytes=max_bytes, max_pixels=max_pixels)
        return np.frombuffer(bytearray(data), np.uint8)
    image = decode(bytes(data), max_bytes=max_bytes, max_pixels=max_pixels,
                   min_size=model.manifest.input_size)  # fmt: skip
    return model.preprocess(image)


def on_device(model: Any, inputs: list[Any]) -> Any:
    """The batch on the model's device, as the worker's runner puts it there:
    ``collate``, pinned on a GPU, ``to_device`` (where nvJPEG decodes)."""
    import torch

    x = model.collate(inputs)
    if model.device.type == "cuda" and isinstance(x, torch.Tensor):
        x = x.pin_memory()
    with torch.inference_mode():
        return model.to_device(x)


class ModelService:
    """``model_id`` loaded on ``device`` with ``threads`` torch threads, warmed up."""

    def __init__(self, models_root: str | Path, device: str, threads: int,
                 model_id: str = MODEL_ID) -> None:  # fmt: skip
        import torch

        from framepool.settings import Settings
        from models.registry import load_model

        self.threads = threads
        torch.set_num_threads(threads)
        settings = Settings()
        self.max_bytes = settings.max_frame_bytes
        self.max_pixels = settings.max_frame_pixels
        self.model = load_model(Path(models_root), model_id, device)
        self.model.warmup(batch_size=1)  # as the worker does, in the loading thread
        self.cuda = self.model.device.type == "cuda"

    def __call__(self, frames: Sequence[bytes]) -> list[dict[str, Any]]:
        """check/decode + preprocess + forward + postprocess of one batch; one reply per frame."""
        import torch

        # torch's thread count is the process's, taken by each thread when it first runs
        # a parallel region: the caller's thread may have started after another count
        # was set (the direct call's model threads, beside the tight loop's runs)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        model = self.model
        inputs = [prepare(model, f, self.max_bytes, self.max_pixels) for f in frames]
        x = on_device(model, inputs)
        with torch.inference_mode():
            t0 = time.perf_counter()
            raw = model.infer(x)
            if self.cuda:
                torch.cuda.synchronize()
            inference_ms = (time.perf_counter() - t0) * 1000.0
            t_post = time.perf_counter()
            outputs = model.postprocess(raw, [FRAME_SIZE] * len(frames))
        done = time.time()
        postprocess_ms = (time.perf_counter() - t_post) * 1000.0
        n = len(frames)
        return [
            {
                "top1": _top1(out),
                "completed_at": done,
                "inference_ms": inference_ms,
                "postprocess_ms": postprocess_ms,
                "batch_size": n,
            }
            for out in outputs
        ]


def _top1(output: dict[str, Any]) -> str:
    """The best label of a classifier's output (``{"classes": [{"label", "score"}, ...]}``);
    empty for other models."""
    classes = output.get("classes") or [{}]
    return str(classes[0].get("label", ""))
