"""What a frame's decode and preprocess cost in the worker's pool thread, before
and after ``models.image`` (torch's uint8 resize, the CxHxW normalisation).

``python -m benchmarks.preprocess [--rounds 5] [--frames 300]`` decodes the bench's
640x480 JPEGs as the worker does (``codec.decode`` at a reduced DCT scale, here
320x240) and times, per frame, in interleaved rounds on one thread:

- ``decode``: ``codec.decode``;
- ``before``: resnet18's preprocess as it was, Pillow's bilinear resize and
  ``(x - mean) / std`` on HxWx3, transposed to CxHxW (:func:`pillow_preprocess`);
- ``after``: ``ImageNetClassifier.preprocess`` as it is.

Prints the median of each round's median (ms per frame), the ratio after / before
from the same rounds, and the largest difference between the two inputs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.harness import median, test_frames
from framepool import codec
from models.imagenet import MEAN, STD


def pillow_preprocess(image: np.ndarray, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """resnet18's preprocess before ``models.image``: the baseline."""
    resized = np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    x = (resized.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def per_call_ms(fn: Callable[[int], Any], n: int) -> float:
    """Median ms of ``fn(i)`` over ``n`` calls."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000.0)
    return median(times)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.frames < 1:
        ap.error("--rounds and --frames must be >= 1")
    import torch

    from framepool.settings import Settings
    from models.registry import load_model

    torch.set_num_threads(1)
    model = load_model(Settings().models_root, "resnet18", "cpu")
    jpegs = test_frames(16, quality=90)
    size = model.manifest.input_size
    limits = {"max_bytes": 1 << 24, "max_pixels": 1 << 26}
    images = [codec.decode(j, min_size=size, **limits) for j in jpegs]
    diff = max(float(np.abs(model.preprocess(im) - pillow_preprocess(im, size)).max())
               for im in images)  # fmt: skip
    rounds: dict[str, list[float]] = {"decode": [], "before": [], "after": []}
    for _ in range(args.rounds):
        rounds["decode"].append(per_call_ms(
            lambda i: codec.decode(jpegs[i % 16], min_size=size, **limits), args.frames))  # fmt: skip
        rounds["before"].append(
            per_call_ms(lambda i: pillow_preprocess(images[i % 16], size), args.frames)
        )
        rounds["after"].append(per_call_ms(lambda i: model.preprocess(images[i % 16]), args.frames))
    print(f"{images[0].shape[1]}x{images[0].shape[0]} decoded -> {size[0]}x{size[1]}, "
          f"{args.rounds} rounds of {args.frames} frames, ms per frame (median of rounds):")  # fmt: skip
    for name, values in rounds.items():
        print(f"  {name:7s} {median(values):6.3f}   rounds {', '.join(f'{v:.3f}' for v in values)}")
    ratios = [a / b for a, b in zip(rounds["after"], rounds["before"], strict=True)]
    print(f"  after / before: {median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
          f"largest input difference {diff:.4f} (of a range of ~4.5)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
