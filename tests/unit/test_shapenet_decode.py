"""shape_detector's decode (numpy) against the torch formulation it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.nets.shapenet import decode


def torch_decode(raw, sizes, num_classes, threshold=0.3, max_detections=50):  # the oracle
    raw = raw.float()
    n, _, out_h, out_w = raw.shape
    heat = torch.sigmoid(raw[:, :num_classes])
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
    out = []
    for sc, cl, bx, (width, height) in zip(
        scores.tolist(), cls.tolist(), boxes.tolist(), sizes, strict=True
    ):
        sx, sy = width / out_w, height / out_h
        frame = []
        for s, c, b in zip(sc, cl, bx, strict=True):
            if s < threshold:
                break
            x1, y1 = min(max(b[0] * sx, 0.0), width), min(max(b[1] * sy, 0.0), height)
            x2, y2 = min(max(b[2] * sx, 0.0), width), min(max(b[3] * sy, 0.0), height)
            frame.append((int(c), s, (x1, y1, x2, y2)))
        out.append(frame)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_same_detections_as_the_torch_decode(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, classes, h, w = 4, 3, 30, 40
    raw = torch.randn(n, classes + 4, h, w, generator=g) * 2 - 3
    for i in range(n):  # a few clear peaks per frame, some near the border
        for _ in range(3 + i):
            y, x = (
                int(torch.randint(0, h, (1,), generator=g)),
                int(torch.randint(0, w, (1,), generator=g)),
            )
            raw[i, int(torch.randint(0, classes, (1,), generator=g)), y, x] = 4.0 + float(
                torch.rand(1, generator=g)
            )
    sizes = [(640, 480), (320, 240), (1920, 1080), (160, 120)]
    got = decode(raw, sizes, classes, threshold=0.3, max_detections=20)
    want = torch_decode(raw, sizes, classes, threshold=0.3, max_detections=20)
    assert [len(f) for f in got] == [len(f) for f in want] and any(want)
    for gf, wf in zip(got, want, strict=True):
        for d, (c, s, box) in zip(gf, wf, strict=True):
            assert d.label_index == c and d.score == pytest.approx(s, abs=1e-6)
            assert d.box == pytest.approx(box, abs=1e-3)


def test_no_peak_above_the_threshold_gives_no_detections() -> None:
    raw = torch.full((2, 7, 30, 40), -10.0)
    assert decode(raw, [(160, 120), (160, 120)], 3) == [[], []]
