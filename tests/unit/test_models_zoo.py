"""The model zoo: every model loads through the registry and keeps the Model contract."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from framepool.errors import ManifestError
from models.base import Model
from models.nets.resnet import build_resnet
from models.registry import load_model
from models.zoo.shape_detector.evaluate import evaluate, match
from producer.sources.synthetic import GroundTruth, SyntheticCamera

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
ZOO_IDS = ("noop", "resnet18", "resnet50", "shape_detector")
HELD_OUT = (10_000, 10_001, 10_002)  # evaluate.EVAL_SEEDS: never used in training

_cache: dict[str, Model] = {}


def _model(model_id: str) -> Model:
    if model_id not in _cache:
        _cache[model_id] = load_model(ZOO, model_id)
    return _cache[model_id]


def _run(
    model: Model, images: list[np.ndarray], sizes: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    batch = torch.from_numpy(np.stack([model.preprocess(im) for im in images]))
    with torch.inference_mode():
        raw = model.infer(model.to_device(batch))
    return model.postprocess(raw, sizes)


@pytest.mark.parametrize("model_id", ZOO_IDS)
def test_model_loads_and_preprocesses(model_id: str) -> None:
    model = _model(model_id)
    assert model.id == model_id
    w, h = model.manifest.input_size
    for height, width in ((480, 640), (240, 320), (h, w)):  # full size and DCT-reduced decodes
        image = SyntheticCamera(width=width, height=height).frame(0).image
        x = model.preprocess(image)
        assert x.dtype == np.float32
        assert x.shape == ((1, 1, 1) if model_id == "noop" else (3, h, w))
        assert np.isfinite(x).all()


@pytest.mark.parametrize("model_id", ZOO_IDS)
def test_batch_gives_one_output_per_frame(model_id: str) -> None:
    model = _model(model_id)
    n = 2 if model_id == "resnet50" else 4
    cam = SyntheticCamera(seed=9)
    outputs = _run(model, [cam.frame(s).image for s in range(n)], [(640, 480)] * n)
    assert isinstance(outputs, list) and len(outputs) == n
    for out in outputs:
        if model_id == "noop":
            assert out == {}
        elif model_id == "shape_detector":
            assert set(out) == {"detections"}
            for det in out["detections"]:
                assert det["label"] in SyntheticCamera.LABELS
                assert 0.3 <= det["score"] <= 1.0
                x1, y1, x2, y2 = det["box"]
                assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
        else:
            classes = out["classes"]
            assert len(classes) == 5
            scores = [c["score"] for c in classes]
            assert scores == sorted(scores, reverse=True)
            assert all(isinstance(s, float) and 0 <= s <= 1 for s in scores)
            assert sum(scores) <= 1.0 + 1e-5
            assert all(re.fullmatch(r"class_\d+", c["label"]) for c in classes)


def test_noop_ignores_pixels() -> None:
    model = _model("noop")
    a = model.preprocess(np.zeros((480, 640, 3), np.uint8))
    b = model.preprocess(np.full((1080, 1920, 3), 255, np.uint8))
    assert np.array_equal(a, b)
    assert model.infer(torch.zeros(3, 1, 1, 1)) is None
    assert model.postprocess(None, [(640, 480)] * 3) == [{}, {}, {}]
    model.warmup(batch_size=2)


def test_resnet_weights_are_deterministic_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_resnet(18).state_dict(), build_resnet(18).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_resnet(18, seed=1).state_dict()
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert not build_resnet(50).training


def test_resnet_sizes_are_standard() -> None:
    assert sum(p.numel() for p in build_resnet(18).parameters()) == 11_689_512
    assert sum(p.numel() for p in build_resnet(50).parameters()) == 25_557_032
    with pytest.raises(ValueError, match="depth"):
        build_resnet(19)


def test_resnet_outputs_depend_on_the_image() -> None:
    model = _model("resnet18")
    cam = SyntheticCamera(seed=1)
    outs = _run(model, [cam.frame(0).image, np.zeros((480, 640, 3), np.uint8)], [(640, 480)] * 2)
    assert outs[0] != outs[1]


def test_match_counts() -> None:
    truths = [GroundTruth("circle", (0, 0, 10, 10)), GroundTruth("square", (20, 20, 30, 30))]
    dets = [
        {"label": "circle", "score": 0.9, "box": [0, 0, 10, 11]},  # hit
        {"label": "circle", "score": 0.8, "box": [0, 0, 10, 10]},  # duplicate
        {"label": "triangle", "score": 0.7, "box": [20, 20, 30, 30]},  # wrong label
    ]
    assert match(dets, truths) == (1, 2, 1)
    assert match([], truths) == (0, 0, 2)


def test_shape_detector_accuracy_on_held_out_jpeg_frames() -> None:
    model = _model("shape_detector")
    m = evaluate(model, HELD_OUT, frames_per_seed=10, width=640, height=480, jpeg_quality=90)
    assert m["tp"] + m["fn"] >= 60  # about 30 frames with 1-3 shapes each
    assert m["recall"] >= 0.9, m
    assert m["precision"] >= 0.9, m


def test_shape_detector_maps_boxes_to_the_original_frame() -> None:
    """Preprocess may get a reduced decode; boxes must come back in the original's pixels."""
    model = _model("shape_detector")
    tp = fn = fp = 0
    for seed in HELD_OUT:
        cam = SyntheticCamera(width=1280, height=960, seed=seed)
        frames = [cam.frame(s) for s in (5, 500, 5000)]
        small = [f.image[::2, ::2].copy() for f in frames]  # what a 1/2-scale decode gives
        outs = _run(model, small, [(1280, 960)] * len(frames))
        for frame, out in zip(frames, outs, strict=True):
            a, b, c = match(out["detections"], frame.objects)
            tp, fp, fn = tp + a, fp + b, fn + c
    assert tp / (tp + fn) >= 0.9 and tp / max(tp + fp, 1) >= 0.9, (tp, fp, fn)


def test_tampered_weights_sha256_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "zoo" / "shape_detector"
    shutil.copytree(ZOO / "shape_detector", folder)
    toml = folder / "model.toml"
    text = toml.read_text()
    digest = re.search(r'sha256 = "([0-9a-f]{64})"', text)
    assert digest is not None
    flipped = ("0" if digest.group(1)[0] != "0" else "1") + digest.group(1)[1:]
    toml.write_text(text.replace(digest.group(1), flipped))
    with pytest.raises(ManifestError, match="sha256"):
        load_model(tmp_path / "zoo", "shape_detector")
    toml.write_text(text)  # the untouched copy loads
    assert load_model(tmp_path / "zoo", "shape_detector").id == "shape_detector"
