"""A tiny CenterNet-style detector: per-class heatmaps at stride 4 plus box size/offset.

Output channels per cell (stride 4 of the input): ``num_classes`` heatmap
logits, ``log(w), log(h)`` of the box in output cells, and the sub-cell
offset ``dx, dy`` of the box centre from the cell's top-left corner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4
HEAT_PRIOR = 0.1  # initial heatmap probability (CenterNet's bias trick)

M = TypeVar("M", bound=nn.Module)


def _conv_bn_relu(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    pad = 0 if k == stride else (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ShapeNet(nn.Module):
    """Patchify stem (stride 4), a stride-8 context branch, and 1x1 heads at stride 4."""

    def __init__(self, num_classes: int = 3, c4: int = 16, c8: int = 48) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = _conv_bn_relu(3, c4, k=STRIDE, stride=STRIDE)
        self.s4 = _conv_bn_relu(c4, c4)
        self.down = _conv_bn_relu(c4, c8, stride=2)
        self.s8 = nn.Sequential(_conv_bn_relu(c8, c8), _conv_bn_relu(c8, c8))
        self.lateral = nn.Conv2d(c8, c4, 1)
        self.fuse = _conv_bn_relu(c4, c4)
        self.head = nn.Conv2d(c4, num_classes + 4, 1)
        bias = torch.zeros(num_classes + 4)
        bias[:num_classes] = -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR)
        self.head.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f4 = self.s4(self.stem(x))
        f8 = self.s8(self.down(f4))
        up = F.interpolate(self.lateral(f8), size=f4.shape[-2:], mode="nearest")
        return self.head(self.fuse(f4 + up))


def fuse_batchnorm(net: M) -> M:
    """Fold each BatchNorm2d into the Conv2d before it (inference only)."""
    for module in net.modules():
        if not isinstance(module, nn.Sequential) or len(module) != 3:
            continue
        conv, bn = module[0], module[1]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None], False)
            conv.bias = nn.Parameter(bias, requires_grad=False)
        module[1] = nn.Identity()
    return net


@dataclass(frozen=True)
class Detection:
    label_index: int
    score: float
    box: tuple[float, float, float, float]


def decode(
    raw: torch.Tensor,
    sizes: list[tuple[int, int]],
    num_classes: int,
    threshold: float = 0.3,
    max_detections: int = 50,
) -> list[list[Detection]]:
    """Heatmap peaks above ``threshold`` as boxes in each frame's pixels.

    Shapes never overlap, so NMS is class-agnostic: one label per peak.
    """
    raw = raw.float()
    n, _, out_h, out_w = raw.shape
    heat = torch.sigmoid(raw[:, :num_classes])
    # class-agnostic 3x3 NMS: a peak beats every class in its neighbourhood
    best = F.max_pool2d(heat.amax(dim=1, keepdim=True), 3, stride=1, padding=1)
    peaks = heat * (heat == best)
    k = min(max_detections, num_classes * out_h * out_w)
    scores, flat = peaks.reshape(n, -1).topk(k, dim=1)
    cls = flat // (out_h * out_w)
    cell = flat % (out_h * out_w)
    ys, xs = cell // out_w, cell % out_w
    reg = raw[:, num_classes:].reshape(n, 4, -1)
    index = cell[:, None, :].expand(n, 4, k)
    log_w, log_h, dx, dy = reg.gather(2, index).unbind(1)
    cx, cy = xs + dx, ys + dy
    w, h = log_w.clamp(max=8).exp(), log_h.clamp(max=8).exp()
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2)
    keep = scores >= threshold
    results: list[list[Detection]] = []
    rows = zip(scores.tolist(), cls.tolist(), boxes.tolist(), keep.tolist(), strict=True)
    for (sc, cl, bx, kp), (width, height) in zip(rows, sizes, strict=True):
        sx, sy = width / out_w, height / out_h
        frame = []
        for s, c, b, ok in zip(sc, cl, bx, kp, strict=True):
            if not ok:
                break  # scores are sorted
            x1, y1 = min(max(b[0] * sx, 0.0), width), min(max(b[1] * sy, 0.0), height)
            x2, y2 = min(max(b[2] * sx, 0.0), width), min(max(b[3] * sy, 0.0), height)
            frame.append(Detection(int(c), float(s), (x1, y1, x2, y2)))
        results.append(frame)
    return results
