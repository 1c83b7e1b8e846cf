"""The synthetic camera: deterministic frames whose ground truth matches the pixels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from producer.sources.synthetic import GroundTruth, SyntheticCamera, SyntheticFrame


def _overlap(a: GroundTruth, b: GroundTruth) -> bool:
    return not (
        a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
    )


def test_frame_is_a_pure_function_of_its_arguments() -> None:
    a = SyntheticCamera(seed=7).frame(123)
    b = SyntheticCamera(seed=7).frame(123)  # a fresh camera, same arguments
    assert np.array_equal(a.image, b.image)
    assert a.objects == b.objects
    assert a.timestamp == b.timestamp == pytest.approx(12.3)


def test_frames_differ_by_seed_and_seq() -> None:
    cam = SyntheticCamera(seed=1)
    assert not np.array_equal(cam.frame(0).image, cam.frame(1).image)
    assert cam.frame(0).objects != cam.frame(1).objects  # shapes move every frame
    other = SyntheticCamera(seed=2).frame(0)
    assert not np.array_equal(cam.frame(0).image, other.image)


def test_frames_iterator_matches_frame() -> None:
    cam = SyntheticCamera(camera_id="cam-3", seed=3)
    frames = list(cam.frames(count=4, start=10))
    assert [f.seq for f in frames] == [10, 11, 12, 13]
    assert all(isinstance(f, SyntheticFrame) and f.camera_id == "cam-3" for f in frames)
    assert np.array_equal(frames[2].image, cam.frame(12).image)
    endless = cam.frames()
    assert [next(endless).seq for _ in range(3)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("width", "height", "n_shapes"),
    [(640, 480, 3), (160, 120, 3), (1920, 1080, 3), (320, 240, 6), (1280, 720, 1), (33, 40, 4)],
)
def test_shapes_inside_frame_apart_and_sized(width: int, height: int, n_shapes: int) -> None:
    cam = SyntheticCamera(width=width, height=height, n_shapes=n_shapes, seed=5)
    counts = set()
    side = min(width, height)
    for seq in range(0, 3000, 23):
        frame = cam.frame(seq)
        assert frame.image.shape == (height, width, 3)
        assert frame.image.dtype == np.uint8
        assert 1 <= len(frame.objects) <= n_shapes
        counts.add(len(frame.objects))
        for obj in frame.objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert obj.label in SyntheticCamera.LABELS
            if side >= 120:
                assert 0.08 * side - 1e-6 <= x2 - x1 <= 0.20 * side + 1e-6
        for a, b in itertools.combinations(frame.objects, 2):
            assert not _overlap(a, b), (seq, a, b)
    if n_shapes > 1:
        assert len(counts) > 1  # the number of shapes varies with seq


def test_all_labels_appear() -> None:
    cam = SyntheticCamera(seed=0)
    labels = {o.label for seq in range(0, 2000, 10) for o in cam.frame(seq).objects}
    assert labels == set(SyntheticCamera.LABELS)


def test_motion_is_smooth() -> None:
    cam = SyntheticCamera(seed=4, fps=10)
    checked = 0
    for seq in range(300):
        a, b = cam.frame(seq).objects[0], cam.frame(seq + 1).objects[0]  # slot 0 never hides
        if a.label == b.label and a.box[2] - a.box[0] == b.box[2] - b.box[0]:  # same episode
            assert abs(a.box[0] - b.box[0]) < 0.07 * 640
            assert abs(a.box[1] - b.box[1]) < 0.07 * 480
            checked += 1
    assert checked > 250


@pytest.mark.parametrize("seed", [0, 11])
def test_shapes_are_drawn_where_the_truth_says(seed: int) -> None:
    cam = SyntheticCamera(seed=seed)
    for seq in (0, 77, 1234):
        frame = cam.frame(seq)
        background = cam.background(seq)
        changed = np.abs(frame.image.astype(int) - background.astype(int)).sum(axis=2) > 0
        inside = np.zeros_like(changed)
        for obj in frame.objects:
            x1, y1, x2, y2 = obj.box
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            # the shape's centre is painted in a saturated colour, far from the background
            diff = np.abs(frame.image[cy, cx].astype(int) - background[cy, cx].astype(int))
            assert diff.max() > 40, (obj, frame.image[cy, cx], background[cy, cx])
            inside[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
            corner = frame.image[int(y1), int(x1)]  # circles and triangles leave corners alone
            if obj.label != "square":
                assert np.array_equal(corner, background[int(y1), int(x1)])
        assert not changed[~inside].any()  # nothing drawn outside the boxes
        assert changed[inside].mean() > 0.4


def test_square_fills_its_box() -> None:
    cam = SyntheticCamera(seed=0)
    for seq in range(0, 600, 10):
        frame = cam.frame(seq)
        squares = [o for o in frame.objects if o.label == "square"]
        if squares:
            x1, y1, x2, y2 = squares[0].box
            bg = cam.background(seq)
            inner = (slice(int(y1) + 1, int(y2) - 1), slice(int(x1) + 1, int(x2) - 1))
            diff = np.abs(frame.image[inner].astype(int) - bg[inner].astype(int)).sum(axis=2)
            assert (diff > 0).mean() > 0.99
            return
    pytest.fail("no square in 60 frames")


def test_frame_generation_is_fast() -> None:
    import time

    cam = SyntheticCamera(seed=0)
    start = time.perf_counter()
    for seq in range(50):
        cam.frame(seq)
    assert (time.perf_counter() - start) / 50 < 0.02  # a few ms; generous for a busy CI box


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 31}, "too small"),
        ({"height": 0}, "too small"),
        ({"fps": 0}, "fps"),
        ({"fps": -1.5}, "fps"),
        ({"n_shapes": 0}, "n_shapes"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticCamera(**kwargs)  # type: ignore[arg-type]


def test_negative_seq_is_refused() -> None:
    with pytest.raises(ValueError, match="seq"):
        SyntheticCamera().frame(-1)
