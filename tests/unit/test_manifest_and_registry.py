"""Manifests are read without torch; weights are checked against their sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from framepool.errors import ManifestError, UnknownModel
from framepool.manifest import discover, load_manifest, verify_weights
from models.registry import load_model

CODE = """
import numpy as np
from models.base import Model
class Tiny(Model):
    def load(self): self.loaded = True
    def preprocess(self, image): return np.zeros((3, 2, 2), np.float32)
    def infer(self, batch): return batch.sum(dim=(1, 2, 3))
    def postprocess(self, raw, sizes): return [{"w": s[0]} for s in sizes]
"""


def make_model(
    root: Path,
    model_id: str = "tiny",
    weights: bytes | None = b"abc",
    sha: str | None = None,
    **extra: str,
) -> Path:
    folder = root / model_id
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(CODE)
    lines = [
        f'id = "{model_id}"',
        'version = "1.2.3"',
        'entrypoint = "model:Tiny"',
        "input_size = [2, 2]",
        'labels = ["a"]',
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    if weights is not None:
        (folder / "w.bin").write_bytes(weights)
        digest = sha or hashlib.sha256(weights).hexdigest()
        lines += ["[weights]", 'file = "w.bin"', f'sha256 = "{digest}"']
    (folder / "model.toml").write_text("\n".join(lines) + "\n")
    return folder


def test_discover_and_load(tmp_path: Path) -> None:
    make_model(tmp_path)
    found, errors = discover(tmp_path)
    assert list(found) == ["tiny"] and errors == {}
    m = found["tiny"]
    assert m.version == "1.2.3" and m.input_size == (2, 2) and m.weights_path is not None
    model = load_model(tmp_path, "tiny")
    assert model.loaded and model.id == "tiny"  # type: ignore[attr-defined]
    assert model.postprocess(None, [(7, 5)]) == [{"w": 7}]


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    make_model(tmp_path, sha="0" * 64)
    with pytest.raises(ManifestError, match="does not match"):
        load_model(tmp_path, "tiny")


def test_missing_weights_file_is_refused(tmp_path: Path) -> None:
    folder = make_model(tmp_path)
    (folder / "w.bin").unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_weights(load_manifest(folder))


def test_broken_manifests_are_reported_not_fatal(tmp_path: Path) -> None:
    make_model(tmp_path, "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.toml").write_text("id = 'bad'\nversion = [")
    mismatch = make_model(tmp_path, "other")
    (mismatch / "model.toml").write_text(
        (mismatch / "model.toml").read_text().replace('id = "other"', 'id = "else"')
    )
    found, errors = discover(tmp_path)
    assert list(found) == ["good"]
    assert "not valid TOML" in errors["bad"] and "differs from folder" in errors["other"]
    with pytest.raises(ManifestError):
        load_model(tmp_path, "bad")


def test_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    make_model(tmp_path)
    with pytest.raises(UnknownModel, match="known models: tiny"):
        load_model(tmp_path, "nope")


def test_precision_is_read_from_the_manifest_and_a_cpu_runs_fp32(tmp_path: Path) -> None:
    import torch

    make_model(tmp_path, "half", precision='"fp16"')
    assert discover(tmp_path)[0]["half"].precision == "fp16"
    model = load_model(tmp_path, "half")  # on the CPU: fp32, whatever the manifest says
    assert model.precision == "fp32" and model.dtype == torch.float32
    x = model.to_device(torch.ones((2, 3, 2, 2), dtype=torch.float64))
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert load_model(tmp_path, "half", precision="bf16").precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        load_model(tmp_path, "half", precision="fp8")


def test_a_bad_precision_in_the_manifest_is_a_clear_error(tmp_path: Path) -> None:
    make_model(tmp_path, "odd", precision='"fp64"')
    found, errors = discover(tmp_path)
    assert "odd" not in found
    assert "precision" in errors["odd"] and "fp16" in errors["odd"]


def test_the_zoo_resnets_ask_for_fp16_on_cuda() -> None:
    from framepool.settings import DEFAULT_MODELS_ROOT

    found, _ = discover(DEFAULT_MODELS_ROOT)
    assert found["resnet50"].precision == "fp16" and found["resnet50"].max_batch_size == 64
    assert found["resnet18"].precision == "fp16"
    assert found["shape_detector"].precision == "fp32"
