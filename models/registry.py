"""Find models under MODELS_ROOT and load them: manifest, sha256 check, code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from framepool.errors import ManifestError, UnknownModel
from framepool.manifest import ModelManifest, discover, verify_weights
from models.base import Model


def available(root: Path) -> dict[str, ModelManifest]:
    return discover(root)[0]


def _import_entrypoint(manifest: ModelManifest) -> type[Model]:
    module_name, _, class_name = manifest.entrypoint.partition(":")
    file = manifest.path / (module_name.replace(".", "/") + ".py")
    if not file.is_file():
        raise ManifestError(f"{manifest.id}: entrypoint module {file} not found")
    qualified = f"framepool_zoo.{manifest.id}.{module_name}"
    spec = importlib.util.spec_from_file_location(qualified, file)
    if spec is None or spec.loader is None:
        raise ManifestError(f"{manifest.id}: cannot import {file}")
    module = sys.modules.get(qualified)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ManifestError(f"{manifest.id}: {manifest.entrypoint} is not a models.Model")
    return cls


def load_model(
    root: Path, model_id: str, device: str = "cpu", precision: str | None = None
) -> Model:
    """Load ``model_id`` from ``root`` onto ``device`` (weights checked first), in
    ``precision`` on CUDA (default: the manifest's)."""
    manifests, errors = discover(root)
    if model_id not in manifests:
        if model_id in errors:
            raise ManifestError(errors[model_id])
        raise UnknownModel(model_id, list(manifests))
    manifest = manifests[model_id]
    verify_weights(manifest)
    model = _import_entrypoint(manifest)(manifest, device, precision)
    model.load()
    return model
