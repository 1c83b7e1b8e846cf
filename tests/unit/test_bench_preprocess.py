"""``benchmarks.preprocess``: its baseline is resnet18's preprocess as it was (so
the ratio it prints compares the same input), and it runs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness import test_frames
from benchmarks.preprocess import main, pillow_preprocess
from framepool import codec
from framepool.settings import Settings
from models.registry import load_model


def test_the_baseline_gives_the_model_the_same_input() -> None:
    model = load_model(Settings().models_root, "resnet18", "cpu")
    for jpeg in test_frames(3, quality=90):
        image = codec.decode(jpeg, max_bytes=1 << 24, max_pixels=1 << 26, min_size=(224, 224))
        np.testing.assert_allclose(model.preprocess(image), pillow_preprocess(image), atol=1e-5)


def test_it_prints_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "1", "--frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "after / before:" in out and "largest input difference 0.0000" in out
