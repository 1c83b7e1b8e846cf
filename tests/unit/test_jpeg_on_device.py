"""JPEG frames decoded with their batch on the model's device (``GPU_JPEG_DECODE``).

nvJPEG needs a GPU (tests/gpu runs the real one); here a simplejpeg decoder
stands in for it, so the same code path runs on the CPU: the task hands the
JPEG bytes on, ``collate`` keeps them apart, ``to_device`` decodes, resizes and
normalises, and a frame that will not decode fails alone without counting
against the model.
"""

from __future__ import annotations

import time
from concurrent.futures import wait

import numpy as np
import pytest
import simplejpeg
import torch

from framepool import codec
from framepool.errors import BadFrame
from framepool.settings import DEFAULT_MODELS_ROOT
from models.registry import load_model
from producer.sources.synthetic import SyntheticCamera
from workers.lifecycle import ModelHealth
from workers.results import FrameRecord, Origin
from workers.runner import FrameJob, ModelRunner


def cpu_decoder(frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """What nvJPEG returns (CxHxW uint8 RGB), decoded on the CPU."""
    return [
        torch.from_numpy(simplejpeg.decode_jpeg(f.numpy().tobytes(), colorspace="RGB")).permute(
            2, 0, 1
        )
        for f in frames
    ]


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    m = load_model(DEFAULT_MODELS_ROOT, "resnet18", "cpu")
    assert not m.accepts_jpeg  # on a CPU the frames are decoded as before
    m.jpeg_decoder = cpu_decoder
    return m


def frames(n: int, width: int = 640, height: int = 480) -> list[np.ndarray]:
    cam = SyntheticCamera("jpeg", width=width, height=height, fps=10.0, seed=5)
    return [cam.frame(i).image for i in range(n)]


def as_bytes(jpeg: bytes) -> np.ndarray:
    return np.frombuffer(bytearray(jpeg), np.uint8)


def test_jpeg_bytes_are_decoded_resized_and_normalised_as_the_cpu_path_does(model) -> None:  # type: ignore[no-untyped-def]
    images = frames(3) + frames(1, 320, 240)  # two sizes: resized in two groups
    jpegs = [codec.encode_jpeg(im, quality=95) for im in images]
    decoded = [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]
    x = model.collate([as_bytes(j) for j in jpegs[:3]] + [model.preprocess(decoded[3])])
    assert isinstance(x, list)  # JPEG bytes among a resized frame: kept apart
    got = model.to_device(x)
    assert got.shape == (4, 3, 224, 224) and got.dtype == torch.float32
    ref = model.to_device(model.collate([model.preprocess(im) for im in decoded]))
    # torch's antialiased bilinear against Pillow's, then / std (~58): under a grey level
    # on average, a few at the synthetic shapes' sharp edges
    diff = (got - ref).abs()
    assert diff.mean().item() < 0.01 and diff.max().item() < 0.3
    assert torch.equal(got[3], ref[3])  # the pre-resized frame went through unchanged


def test_a_frame_that_will_not_decode_fails_alone_and_not_against_the_model(model) -> None:  # type: ignore[no-untyped-def]
    good = codec.encode_jpeg(frames(1)[0])
    corrupt = good[:200] + b"\x00" * 50  # a valid header, then nothing a decoder can use
    health = ModelHealth("resnet18", window=20, degraded_rate=0.05, unhealthy_rate=0.5)
    health.ready()
    runner = ModelRunner(model, Origin("w", "cpu", "1"), max_batch_size=8, timeout_s=0.0,
                         finish=lambda _: None, health=health)  # fmt: skip
    now = time.time()
    jobs = []
    for i, data in enumerate([good, good, corrupt, good]):
        meta = {"model_id": "resnet18", "camera_id": "c", "seq": i, "captured_at": now,
                "enqueued_at": now, "deadline_at": None, "format": "jpeg", "width": 640,
                "height": 480}  # fmt: skip
        jobs.append(FrameJob(FrameRecord(f"j{i}", f"c{i}", meta), as_bytes(data), (640, 480)))
    for j in jobs:
        runner.submit(j)
    runner.start()
    done, _ = wait([j.future for j in jobs], timeout=60)
    runner.stop()
    assert len(done) == 4
    results = [j.future.result() for j in jobs]
    assert [r["status"] for r in results] == ["ok", "ok", "error", "ok"]
    assert results[2]["error"]["type"] == "BadFrame"
    assert "cannot decode jpeg" in results[2]["error"]["message"]
    assert results[0]["outputs"]["classes"]
    assert health.errors == 0  # a bad frame says nothing about the model


def test_a_model_without_a_decoder_refuses_jpeg_bytes_clearly() -> None:
    m = load_model(DEFAULT_MODELS_ROOT, "resnet18", "cpu")
    with pytest.raises(BadFrame, match="cannot decode JPEG on cpu"):
        m.to_device([torch.zeros(10, dtype=torch.uint8)])
