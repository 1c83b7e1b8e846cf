"""Score the shape detector on held-out synthetic frames: recall and precision at IoU 0.5.

    python -m models.zoo.shape_detector.evaluate            # the README's figures

A detection is a true positive when it has the truth's label and IoU >= 0.5
with a truth not matched yet (detections taken by descending score).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from framepool.codec import decode, encode_jpeg  # noqa: E402
from models.base import Model  # noqa: E402
from producer.sources.synthetic import GroundTruth, SyntheticCamera  # noqa: E402

EVAL_SEEDS = tuple(range(10_000, 10_010))  # never used for training
EVAL_SIZES = ((640, 480), (320, 240), (1280, 720))
_LIMIT = 1 << 40

Box = Sequence[float]


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    detections: Iterable[dict[str, Any]], truths: Iterable[GroundTruth], iou: float = 0.5
) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` for one frame."""
    free = list(truths)
    tp = fp = 0
    for det in sorted(detections, key=lambda d: -d["score"]):
        best, best_iou = None, iou
        for truth in free:
            if truth.label == det["label"]:
                overlap = box_iou(det["box"], truth.box)
                if overlap >= best_iou:
                    best, best_iou = truth, overlap
        if best is None:
            fp += 1
        else:
            free.remove(best)
            tp += 1
    return tp, fp, len(free)


def frame_seqs(seed: int, count: int) -> list[int]:
    """Spread-out frame numbers for one held-out camera."""
    return [int(s) for s in np.random.default_rng(seed).integers(0, 100_000, size=count)]


def evaluate(
    model: Model,
    camera_seeds: Iterable[int] = EVAL_SEEDS,
    frames_per_seed: int = 10,
    width: int = 640,
    height: int = 480,
    jpeg_quality: int | None = 90,
    scaled_decode: bool = True,
    batch_size: int = 16,
) -> dict[str, float]:
    """Recall and precision of ``model`` on synthetic frames, as the worker would see them.

    Frames go through JPEG encode + decode (``framepool.codec``; at a reduced
    DCT scale no smaller than the model's input when ``scaled_decode``) unless
    ``jpeg_quality`` is None, then ``preprocess`` / ``infer`` / ``postprocess``.
    """
    min_size = model.manifest.input_size if scaled_decode else None
    tp = fp = fn = 0
    for seed in camera_seeds:
        cam = SyntheticCamera(width=width, height=height, seed=seed)
        frames = [cam.frame(s) for s in frame_seqs(seed, frames_per_seed)]
        for i in range(0, len(frames), batch_size):
            chunk = frames[i : i + batch_size]
            images = [f.image for f in chunk]
            if jpeg_quality is not None:
                images = [
                    decode(
                        encode_jpeg(im, quality=jpeg_quality),
                        max_bytes=_LIMIT,
                        max_pixels=_LIMIT,
                        min_size=min_size,
                    )
                    for im in images
                ]
            batch = torch.from_numpy(np.stack([model.preprocess(im) for im in images]))
            with torch.inference_mode():
                raw = model.infer(model.to_device(batch))
            outputs = model.postprocess(raw, [(width, height)] * len(chunk))
            for frame, out in zip(chunk, outputs, strict=True):
                a, b, c = match(out["detections"], frame.objects)
                tp, fp, fn = tp + a, fp + b, fn + c
    return {
        "recall": tp / max(tp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def main(argv: list[str] | None = None) -> None:
    from models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--frames-per-seed", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.root, "shape_detector")
    report(model, args.frames_per_seed)


def report(model: Model, frames_per_seed: int = 50) -> None:
    """Print recall/precision per frame size and decode path."""
    for width, height in EVAL_SIZES:
        for scaled in (True, False):
            m = evaluate(model, EVAL_SEEDS, frames_per_seed, width, height, scaled_decode=scaled)
            how = "jpeg q90, scaled decode" if scaled else "jpeg q90, full decode"
            print(
                f"{width}x{height} ({how}): recall {m['recall']:.4f} "
                f"precision {m['precision']:.4f} (tp {m['tp']} fp {m['fp']} fn {m['fn']})"
            )


if __name__ == "__main__":
    main()
