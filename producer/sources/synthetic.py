"""A synthetic camera: moving filled shapes over a textured background.

Every frame is a pure function of ``(seed, width, height, n_shapes, fps, seq)``,
so a test can recompute the ground truth of any frame it sent. Each shape slot
owns one cell of a grid laid over the frame and moves smoothly inside it, so
shapes never overlap and always stay fully inside the frame. Slots change
label, size and colour at "episode" boundaries (every few seconds) and slots
other than the first are hidden during some episodes, so a frame holds between
1 and ``n_shapes`` shapes.

:class:`SyntheticSource` adapts a camera to the ingest ``FrameSource`` protocol.
"""

from __future__ import annotations

import colorsys
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from producer.sources.base import SourceFrame, Stoppable

MIN_SIDE = 32
_PAD = 16  # the noisy canvas is this much larger; each frame crops it at an offset
_MIN_FRAC, _MAX_FRAC = 0.08, 0.20  # shape size as a fraction of the frame's smaller side
_TRIANGLE_HEIGHT = 0.9  # triangle height / base


@dataclass(frozen=True)
class GroundTruth:
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the frame


@dataclass(frozen=True)
class SyntheticFrame:
    camera_id: str
    seq: int
    timestamp: float
    image: np.ndarray  # HxWx3 uint8 RGB
    objects: tuple[GroundTruth, ...]


@dataclass(frozen=True)
class _Slot:
    cell: tuple[float, float, float, float]
    episode_len: int
    phase: int
    freq: tuple[float, float]
    angle: tuple[float, float]


@dataclass(frozen=True)
class _Shape:
    label: str
    box: tuple[float, float, float, float]
    colour: tuple[int, int, int]


def _grid(n: int, width: int, height: int) -> tuple[int, int]:
    """(cols, rows) with at least ``n`` cells whose smaller side is largest."""
    best = (1, n)
    best_key = (-1.0, 0)
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        key = (min(width / cols, height / rows), -cols * rows)
        if key > best_key:
            best, best_key = (cols, rows), key
    return best


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted two-colour gradient with sinusoidal texture, float32 HxWx3."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx /= max(width - 1, 1)
    yy /= max(height - 1, 1)
    theta = rng.uniform(0, 2 * math.pi)
    g = xx * math.cos(theta) + yy * math.sin(theta)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    c0 = rng.uniform(80, 170) + rng.uniform(-20, 20, size=3)
    c1 = rng.uniform(80, 170) + rng.uniform(-20, 20, size=3)
    bg = c0[None, None, :] * (1 - g[..., None]) + c1[None, None, :] * g[..., None]
    texture = np.zeros((height, width), dtype=np.float32)
    for _ in range(3):
        kx, ky = rng.uniform(1, 12, size=2) * rng.choice([-1, 1], size=2)
        texture += rng.uniform(3, 8) * np.sin(2 * math.pi * (kx * xx + ky * yy) + rng.uniform(0, 6))
    return (bg + texture[..., None]).astype(np.float32)


def _colour(hue: float, rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


class SyntheticCamera:
    """Deterministic synthetic frames with ground-truth boxes."""

    LABELS = ("circle", "square", "triangle")

    def __init__(
        self,
        camera_id: str = "synthetic",
        width: int = 640,
        height: int = 480,
        fps: float = 10.0,
        n_shapes: int = 3,
        seed: int = 0,
    ) -> None:
        if width < MIN_SIDE or height < MIN_SIDE:
            raise ValueError(f"frame size {width}x{height} is too small: both sides must be >= 32")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if n_shapes < 1:
            raise ValueError(f"n_shapes must be >= 1, got {n_shapes}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.camera_id = camera_id
        self.width, self.height = int(width), int(height)
        self.fps = float(fps)
        self.n_shapes = int(n_shapes)
        self.seed = int(seed)

        rng = np.random.default_rng((self.seed, 0x5EED))
        cols, rows = _grid(self.n_shapes, self.width, self.height)
        cw, ch = self.width / cols, self.height / rows
        cells = [
            (c * cw, r * ch, (c + 1) * cw, (r + 1) * ch) for r in range(rows) for c in range(cols)
        ]
        order = rng.permutation(len(cells))
        self._slots = tuple(
            _Slot(
                cell=cells[order[i]],
                episode_len=int(rng.integers(20, 61)),
                phase=int(rng.integers(0, 1000)),
                freq=(float(rng.uniform(0.04, 0.2)), float(rng.uniform(0.04, 0.2))),
                angle=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))),
            )
            for i in range(self.n_shapes)
        )
        self._hue0 = float(rng.uniform(0, 1))
        side = min(self.width, self.height)
        self._margin = max(1.0, 0.01 * side)
        fit = min(cw, ch) - 2 * self._margin
        self._size_max = min(_MAX_FRAC * side, fit)
        self._size_min = min(_MIN_FRAC * side, 0.6 * self._size_max)

        pw, ph = self.width + _PAD, self.height + _PAD
        bg = _background(rng, pw, ph)
        noise = rng.normal(0.0, 4.0, size=(ph, pw, 3)).round().clip(-12, 12)
        self._noise = noise.astype(np.int16)
        self._canvas = np.clip(bg + noise, 0, 255).astype(np.uint8)

    # -- geometry ---------------------------------------------------------------

    def _offset(self, seq: int) -> tuple[int, int]:
        return (seq * 7 + 3) % (_PAD + 1), (seq * 11 + 5) % (_PAD + 1)

    def _shapes(self, seq: int) -> list[_Shape]:
        t = seq / self.fps
        n = len(self._slots)
        shapes = []
        for i, slot in enumerate(self._slots):
            episode = (seq + slot.phase) // slot.episode_len
            rng = np.random.default_rng((self.seed, i, episode))
            visible = rng.uniform() >= 0.25
            label = self.LABELS[int(rng.integers(len(self.LABELS)))]
            size = float(rng.uniform(self._size_min, self._size_max))
            colour = _colour(self._hue0 + (i + rng.uniform(0.15, 0.85)) / n, rng)
            if i > 0 and not visible:
                continue
            w = size
            h = size * _TRIANGLE_HEIGHT if label == "triangle" else size
            x0, y0, x1, y1 = slot.cell
            m = self._margin
            ux = 0.5 + 0.5 * math.sin(2 * math.pi * slot.freq[0] * t + slot.angle[0])
            uy = 0.5 + 0.5 * math.sin(2 * math.pi * slot.freq[1] * t + slot.angle[1])
            left = x0 + m + (x1 - x0 - 2 * m - w) * ux
            top = y0 + m + (y1 - y0 - 2 * m - h) * uy
            shapes.append(_Shape(label, (left, top, left + w, top + h), colour))
        return shapes

    # -- drawing ----------------------------------------------------------------

    def background(self, seq: int) -> np.ndarray:
        """The frame ``seq`` would show with no shapes (same noise), HxWx3 uint8."""
        oy, ox = self._offset(seq)
        return self._canvas[oy : oy + self.height, ox : ox + self.width].copy()

    def _draw(self, image: np.ndarray, shape: _Shape, oy: int, ox: int) -> None:
        x1, y1, x2, y2 = shape.box
        xa, ya = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
        xb, yb = min(int(math.ceil(x2)), self.width), min(int(math.ceil(y2)), self.height)
        px = np.arange(xa, xb, dtype=np.float32)[None, :] + 0.5
        py = np.arange(ya, yb, dtype=np.float32)[:, None] + 0.5
        if shape.label == "circle":
            cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
            mask = (px - cx) ** 2 + (py - cy) ** 2 <= r * r
        elif shape.label == "square":
            mask = (px >= x1) & (px < x2) & (py >= y1) & (py < y2)
        else:  # upright triangle: apex at the top centre, base along y2
            cx, half = (x1 + x2) / 2, (x2 - x1) / 2
            frac = (py - y1) / (y2 - y1)  # 0 at the apex, 1 at the base
            mask = (np.abs(px - cx) <= half * frac) & (py >= y1) & (py < y2)
        noise = self._noise[oy + ya : oy + yb, ox + xa : ox + xb]
        fill = np.clip(noise + np.asarray(shape.colour, dtype=np.int16), 0, 255).astype(np.uint8)
        region = image[ya:yb, xa:xb]
        region[mask] = fill[mask]

    def frame(self, seq: int) -> SyntheticFrame:
        """Frame number ``seq`` (>= 0) and its ground truth."""
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        oy, ox = self._offset(seq)
        image = self._canvas[oy : oy + self.height, ox : ox + self.width].copy()
        shapes = self._shapes(seq)
        for shape in shapes:
            self._draw(image, shape, oy, ox)
        objects = tuple(GroundTruth(s.label, s.box) for s in shapes)
        return SyntheticFrame(self.camera_id, seq, seq / self.fps, image, objects)

    def frames(self, count: int | None = None, start: int = 0) -> Iterator[SyntheticFrame]:
        """Frames ``start, start + 1, ...``; endless when ``count`` is None."""
        seq = start
        while count is None or seq < start + count:
            yield self.frame(seq)
            seq += 1


class SyntheticSource(Stoppable):
    """A :class:`SyntheticCamera` as a :class:`~producer.sources.base.FrameSource`.

    ``realtime`` (the default) paces frames at the camera's fps, as a live
    camera would; without it frames come as fast as they are drawn and the
    source counts as finite (it waits rather than drops when the queue is
    full). ``captured_at`` is ``start + (seq - first seq) / fps``.
    """

    def __init__(
        self,
        camera: SyntheticCamera,
        *,
        count: int | None = None,
        start: int = 0,
        realtime: bool = True,
    ) -> None:
        super().__init__()
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.camera = camera
        self.camera_id = camera.camera_id
        self.fps = camera.fps
        self.count, self.start, self.live = count, start, realtime

    @property
    def name(self) -> str:
        c = self.camera
        return f"synthetic {c.width}x{c.height}@{c.fps:g} seed={c.seed}"

    def __iter__(self) -> Iterator[SourceFrame]:
        anchor, t0 = time.time(), time.monotonic()
        for f in self.camera.frames(self.count, self.start):
            offset = (f.seq - self.start) / self.fps
            if self.stopped or (self.live and self._sleep(t0 + offset - time.monotonic())):
                return
            yield SourceFrame(self.camera_id, f.seq, anchor + offset, f.image, self.fps)
