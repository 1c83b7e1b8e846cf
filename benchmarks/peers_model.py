"""The work every system in ``framepool bench peers`` does with a batch of frames.

framepool's worker decodes each JPEG with ``framepool.codec.decode`` (at a
reduced DCT scale down to the model's input size), runs ``model.preprocess``,
stacks the batch, runs ``model.infer`` under ``torch.inference_mode`` and then
``model.postprocess``. :class:`Resnet18Service` does exactly that for a list of
JPEG bytes, so the in-process baseline, the Ray Serve deployment and the Triton
(PyTriton) model all do the same work per frame; only the serving around it
differs. Each reply carries the server-side completion stamp (for the
throughput window), the forward pass's duration and the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_ID = "resnet18"
FRAME_SIZE = (640, 480)  # (width, height) of the bench frames, given to postprocess


class Resnet18Service:
    """resnet18 loaded on ``device`` with ``threads`` torch threads, warmed up."""

    def __init__(self, models_root: str | Path, device: str, threads: int) -> None:
        import torch

        from framepool.settings import Settings
        from models.registry import load_model

        self.threads = threads
        torch.set_num_threads(threads)
        settings = Settings()
        self.max_bytes = settings.max_frame_bytes
        self.max_pixels = settings.max_frame_pixels
        self.model = load_model(Path(models_root), MODEL_ID, device)
        self.model.warmup(batch_size=1)  # as the worker does, in the loading thread
        self.cuda = self.model.device.type == "cuda"

    def __call__(self, frames: Sequence[bytes]) -> list[dict[str, Any]]:
        """decode + preprocess + forward + postprocess of one batch; one reply per frame."""
        import torch

        from framepool.codec import decode

        # torch's thread count is the process's, taken by each thread when it first runs
        # a parallel region: the caller's thread may have started after another count
        # was set (the direct call's model threads, beside the tight loop's runs)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        model = self.model
        min_size = model.manifest.input_size
        inputs = [
            model.preprocess(
                decode(
                    bytes(f),
                    max_bytes=self.max_bytes,
                    max_pixels=self.max_pixels,
                    min_size=min_size,
                )
            )
            for f in frames
        ]
        x = model.to_device(model.collate(inputs))  # as the worker's runner does
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
    """The best label of resnet18's output (``{"classes": [{"label", "score"}, ...]}``)."""
    classes = output.get("classes") or [{}]
    return str(classes[0].get("label", ""))
