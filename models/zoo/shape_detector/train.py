"""Train the shape detector on SyntheticCamera frames (CPU, 2 threads, about 4 minutes).

    python -m models.zoo.shape_detector.train              # from the project root
    python models/zoo/shape_detector/train.py --steps 500  # a quick, worse run

Renders frames from training cameras (seeds 0-159, never the evaluation seeds)
at several sizes, sends most of them through JPEG and the worker's decode paths
(full and reduced DCT scale), resizes them to the manifest's input size and
trains a CenterNet-style network: focal loss on per-class heatmaps at stride 4,
L1 on log box size and centre offset. Writes ``weights.pt`` next to this file,
puts its sha256 into ``model.toml``, then prints held-out recall/precision
(``evaluate.py``). Seeds are fixed, so a rerun with the same torch build and
thread count gives the same weights.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from framepool.codec import decode, encode_jpeg  # noqa: E402
from framepool.manifest import load_manifest, sha256_file  # noqa: E402
from models.nets.shapenet import STRIDE, ShapeNet  # noqa: E402
from models.registry import load_model  # noqa: E402
from models.zoo.shape_detector.evaluate import report  # noqa: E402
from models.zoo.shape_detector.model import PIXEL_MEAN, PIXEL_SCALE, resize  # noqa: E402
from producer.sources.synthetic import SyntheticCamera  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAIN_SEEDS = range(0, 160)
FRAMES_PER_CAMERA = 50
# (width, height, share of the training cameras)
SIZES = (
    (640, 480, 0.45),
    (320, 240, 0.10),
    (1280, 720, 0.15),
    (1920, 1080, 0.05),
    (800, 600, 0.05),
    (960, 540, 0.05),
    (480, 360, 0.05),
    (160, 120, 0.05),
    (1024, 768, 0.05),
)
N_SHAPES = (1, 2, 3, 3, 3, 4, 5, 6)
_LIMIT = 1 << 40

Job = tuple[int, int, int, int, tuple[int, int]]


def _jobs() -> list[Job]:
    rng = np.random.default_rng(1234)
    shares = np.array([s[2] for s in SIZES])
    picks = rng.choice(len(SIZES), size=len(TRAIN_SEEDS), p=shares / shares.sum())
    input_size = load_manifest(HERE).input_size
    return [
        (seed, SIZES[k][0], SIZES[k][1], int(rng.choice(N_SHAPES)), input_size)
        for seed, k in zip(TRAIN_SEEDS, picks, strict=True)
    ]


def render_camera(job: Job) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames of one training camera at input size, and their boxes in output cells.

    Boxes are rows ``[class, x1, y1, x2, y2]``.
    """
    seed, width, height, n_shapes, size = job
    cam = SyntheticCamera(width=width, height=height, n_shapes=n_shapes, seed=seed)
    rng = np.random.default_rng((seed, 77))
    out_w, out_h = size[0] / STRIDE, size[1] / STRIDE
    images, boxes = [], []
    for seq in rng.integers(0, 100_000, size=FRAMES_PER_CAMERA):
        frame = cam.frame(int(seq))
        image = frame.image
        path = rng.uniform()
        if path > 0.15:  # JPEG, then the worker's full or reduced-scale decode
            data = encode_jpeg(image, quality=int(rng.integers(60, 96)))
            min_size = size if path > 0.5 else None
            image = decode(data, max_bytes=_LIMIT, max_pixels=_LIMIT, min_size=min_size)
        images.append(resize(image, size))
        sx, sy = out_w / width, out_h / height
        rows = np.array([(cam.LABELS.index(o.label), *o.box) for o in frame.objects])
        boxes.append((rows * (1.0, sx, sy, sx, sy)).astype(np.float32))
    return np.stack(images), boxes


def build_dataset(jobs: list[Job], processes: int = 2) -> tuple[np.ndarray, list[np.ndarray]]:
    with get_context("fork").Pool(processes) as pool:
        parts = pool.map(render_camera, jobs, chunksize=4)
    images = np.concatenate([p[0] for p in parts])
    boxes = [b for p in parts for b in p[1]]
    return images, boxes


def make_targets(
    boxes: list[np.ndarray], flips: np.ndarray, num_classes: int, out_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmaps (Gaussian peaks of 1 at centre cells), regression targets and their mask."""
    out_h, out_w = out_hw
    n = len(boxes)
    heat = np.zeros((n, num_classes, out_h, out_w), dtype=np.float32)
    reg = np.zeros((n, 4, out_h, out_w), dtype=np.float32)
    mask = np.zeros((n, out_h, out_w), dtype=np.float32)
    ys = np.arange(out_h, dtype=np.float32)[:, None]
    xs = np.arange(out_w, dtype=np.float32)[None, :]
    for b, (rows, flip) in enumerate(zip(boxes, flips, strict=True)):
        for c, x1, y1, x2, y2 in rows:
            if flip:
                x1, x2 = out_w - x2, out_w - x1
            w, h = x2 - x1, y2 - y1
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = min(int(cx), out_w - 1), min(int(cy), out_h - 1)
            sigma = max(0.4, (w + h) / 12)
            g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
            heat[b, int(c)] = np.maximum(heat[b, int(c)], g)
            reg[b, :, iy, ix] = (math.log(w), math.log(h), cx - ix, cy - iy)
            mask[b, iy, ix] = 1.0
    return torch.from_numpy(heat), torch.from_numpy(reg), torch.from_numpy(mask)


def detection_loss(
    out: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss plus L1 on size and offset at the centres."""
    k = heat.shape[1]
    logits = out[:, :k]
    p = torch.sigmoid(logits)
    pos = heat.eq(1.0).float()
    pos_loss = -F.logsigmoid(logits) * (1 - p) ** 2 * pos
    neg_loss = -F.logsigmoid(-logits) * p**2 * (1 - heat) ** 4 * (1 - pos)
    n_pos = pos.sum().clamp(min=1.0)
    focal = (pos_loss.sum() + neg_loss.sum()) / n_pos
    l1 = (F.l1_loss(out[:, k:], reg, reduction="none") * mask[:, None]).sum() / n_pos
    return focal + l1


def _batch(
    images: torch.Tensor, boxes: list[np.ndarray], idx: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, list[np.ndarray], np.ndarray]:
    """Augmented input batch: horizontal flips, channel permutations, gain and bias."""
    x = images[torch.from_numpy(idx)].permute(0, 3, 1, 2).float()
    flips = rng.uniform(size=len(idx)) < 0.5
    x[torch.from_numpy(flips)] = x[torch.from_numpy(flips)].flip(3)
    perms = torch.from_numpy(np.stack([rng.permutation(3) for _ in idx]))
    x = x.gather(1, perms[:, :, None, None].expand_as(x))
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, size=(len(idx), 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-20, 20, size=(len(idx), 1, 1, 1)).astype(np.float32))
    x = ((x * gain + bias).clamp(0, 255) - PIXEL_MEAN) / PIXEL_SCALE
    return x, [boxes[i] for i in idx], flips


def train(
    images: np.ndarray, boxes: list[np.ndarray], steps: int, batch_size: int, lr: float
) -> ShapeNet:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = ShapeNet(num_classes=len(SyntheticCamera.LABELS))
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    data = torch.from_numpy(images)
    out_hw = (images.shape[1] // STRIDE, images.shape[2] // STRIDE)
    running, start = 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(images), size=batch_size)
        x, rows, flips = _batch(data, boxes, idx, rng)
        heat, reg, mask = make_targets(rows, flips, net.num_classes, out_hw)
        loss = detection_loss(net(x), heat, reg, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % 250 == 0 or step == steps:
            print(
                f"step {step}/{steps} loss {running / 250:.4f} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
            running = 0.0
    return net.eval()


def save(net: ShapeNet) -> str:
    """Write weights.pt and its sha256 into model.toml; return the digest."""
    manifest = load_manifest(HERE)
    assert manifest.weights is not None, "model.toml needs a [weights] table"
    path = HERE / manifest.weights.file
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(state, path)
    digest = sha256_file(path)
    toml = HERE / "model.toml"
    text = re.sub(r'sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', toml.read_text())
    toml.write_text(text)
    return digest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the shape detector.")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--eval-frames", type=int, default=50, help="per held-out camera")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # tiny Adam moments must not slow the CPU down

    t0 = time.perf_counter()
    images, boxes = build_dataset(_jobs())
    t1 = time.perf_counter()
    n_obj = sum(len(b) for b in boxes)
    print(f"rendered {len(images)} frames, {n_obj} shapes in {t1 - t0:.0f}s", flush=True)
    net = train(images, boxes, args.steps, args.batch_size, args.lr)
    t2 = time.perf_counter()
    print(f"trained {args.steps} steps in {t2 - t1:.0f}s", flush=True)
    digest = save(net)
    print(f"wrote {HERE / 'weights.pt'} (sha256 {digest[:12]}...)", flush=True)

    report(load_model(HERE.parent, "shape_detector"), args.eval_frames)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
