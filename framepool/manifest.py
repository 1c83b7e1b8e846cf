"""Model manifests: ``MODELS_ROOT/<model_id>/model.toml``.

Read without importing torch or the model's code, so the producer and the
monitor can list models too.

    id = "shape_detector"
    version = "1.0.0"
    entrypoint = "model:ShapeDetector"   # <module in the folder>:<class>
    input_size = [128, 96]                # width, height the model sees
    labels = ["circle", "square", "triangle"]
    max_batch_size = 32
    memory_mb = 40                        # estimate; the worker measures too
    cpu_wait = "passive"                  # or "spin": see workers/device.py
    precision = "fp16"                    # on CUDA (fp32 | fp16 | bf16); a CPU runs fp32
    [weights]
    file = "weights.pt"
    sha256 = "..."
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from framepool.errors import ManifestError

MANIFEST = "model.toml"


class Weights(BaseModel):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelManifest(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    version: str
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    input_size: tuple[int, int]
    labels: list[str] = Field(default_factory=list)
    max_batch_size: int = Field(32, ge=1)
    memory_mb: float = Field(0.0, ge=0)
    # How torch's CPU threads wait between parallel regions when this model runs on
    # a CPU (CPU_WAIT_POLICY=auto): "spin" suits forward passes of tens of ms (the
    # threads stay awake between layers), "passive" small ones (they sleep at once
    # and leave the cores to decode and Redis). workers/device.py has the figures.
    cpu_wait: Literal["passive", "spin"] = "passive"
    # The weights' and inputs' dtype on a CUDA device (models/base.py: Model.place and
    # Model.to_device). A CPU always runs fp32: its half-precision kernels are slower.
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    description: str = ""
    weights: Weights | None = None
    path: Path = Path(".")

    @property
    def weights_path(self) -> Path | None:
        return self.path / self.weights.file if self.weights else None


def load_manifest(folder: Path) -> ModelManifest:
    file = folder / MANIFEST
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{file}: no model.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{file}: not valid TOML: {exc}") from exc
    try:
        manifest = ModelManifest.model_validate({**data, "path": folder})
    except ValidationError as exc:
        raise ManifestError(f"{file}: {exc}") from exc
    if manifest.id != folder.name:
        raise ManifestError(f"{file}: id {manifest.id!r} differs from folder {folder.name!r}")
    return manifest


def discover(root: Path) -> tuple[dict[str, ModelManifest], dict[str, str]]:
    """All manifests under ``root``: ``({model_id: manifest}, {folder: error})``."""
    found: dict[str, ModelManifest] = {}
    errors: dict[str, str] = {}
    if not root.is_dir():
        return found, {str(root): "MODELS_ROOT is not a directory"}
    for folder in sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()):
        try:
            m = load_manifest(folder)
        except ManifestError as exc:
            errors[folder.name] = str(exc)
            continue
        found[m.id] = m
    return found, errors


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(manifest: ModelManifest) -> Path | None:
    """Check the weights file against its sha256; return its path (None if none)."""
    path = manifest.weights_path
    if path is None or manifest.weights is None:
        return None
    if not path.is_file():
        raise ManifestError(f"{manifest.id}: weights file {path} is missing")
    digest = sha256_file(path)
    if digest != manifest.weights.sha256:
        raise ManifestError(
            f"{manifest.id}: weights {path.name} sha256 {digest[:12]}… does not match "
            f"the manifest's {manifest.weights.sha256[:12]}…"
        )
    return path
