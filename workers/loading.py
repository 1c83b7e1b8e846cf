"""The seed's startup flow for models: place, load, warm up, report ready.

For each model the worker was asked to serve:

1. the GPU manager places it (``cuda:N`` where its manifest estimate fits, else
   ``cpu`` when ``GPU_FALLBACK_TO_CPU``, else the model is refused);
2. its code and weights load, and it warms up (``MODEL_WARMUP_ENABLED``) at its
   largest batch on a GPU, so the measured peak memory is the real one;
3. all of it within ``MODEL_LOAD_TIMEOUT_MS``.

A model that is refused, raises or times out is marked ``failed`` with the
reason; the others load and serve as usual (isolation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from framepool.errors import ModelError, ModelRefused
from framepool.log import LogTimer, get_logger
from framepool.manifest import discover
from framepool.settings import Settings
from models.base import Model
from models.registry import load_model
from workers.gpu_manager import GPUManager
from workers.lifecycle import ModelHealth, ModelState

log = get_logger(__name__)

OnChange = Callable[[str, ModelState, ModelState, str], None]


@dataclass
class ModelSlot:
    """One model the worker was asked for: its health, and the model once loaded."""

    model_id: str
    health: ModelHealth
    model: Model | None = None
    version: str | None = None
    device: str | None = None


def _with_timeout(fn: Callable[[], Model], timeout_s: float, what: str) -> Model:
    """Run ``fn`` in a thread; give up after ``timeout_s`` (the thread is left to finish)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["model"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    t = threading.Thread(target=run, name=f"load-{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise ModelError(
            f"{what}: load did not finish within MODEL_LOAD_TIMEOUT_MS={timeout_s * 1000:.0f}"
        )
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["model"]  # type: ignore[return-value]


def _build(settings: Settings, model_id: str, device: str, warm_batch: int) -> Model:
    model = load_model(settings.models_root, model_id, device)
    if settings.model_warmup_enabled:
        model.warmup(batch_size=warm_batch)
    return model


def load_models(
    settings: Settings,
    model_ids: Iterable[str],
    gpu: GPUManager,
    on_change: OnChange | None = None,
) -> list[ModelSlot]:
    """Load every model it can; the ones that fail are returned ``failed`` with a reason."""
    manifests, broken = discover(settings.models_root)
    slots: list[ModelSlot] = []
    for model_id in model_ids:
        health = ModelHealth(
            model_id,
            window=settings.model_health_window,
            degraded_rate=settings.model_degraded_error_rate,
            unhealthy_rate=settings.model_unhealthy_error_rate,
            on_change=on_change,
        )
        slot = ModelSlot(model_id, health)
        slots.append(slot)
        manifest = manifests.get(model_id)
        if manifest is None:
            reason = broken.get(model_id, f"no model {model_id!r} under MODELS_ROOT")
            health.failed(reason)
            log.error("model_load_failed", model_id=model_id, reason=reason)
            continue
        slot.version = manifest.version
        try:
            device = gpu.allocate(model_id, manifest.version, manifest.memory_mb)
        except ModelRefused as exc:
            health.failed(str(exc))
            log.error("model_refused", model_id=model_id, reason=str(exc))
            continue
        slot.device = device
        warm = manifest.max_batch_size if device.startswith("cuda") else 1
        build = partial(_build, settings, model_id, device, min(warm, settings.max_batch_size))
        measured = partial(gpu.measure, model_id, manifest.version, device, build)
        try:
            with LogTimer(log, "model_load", model_id=model_id, device=device):
                timeout_s = settings.model_load_timeout_ms / 1000.0
                slot.model = _with_timeout(measured, timeout_s, model_id)
        except Exception as exc:
            gpu.release(model_id, manifest.version)
            reason = f"{type(exc).__name__}: {exc}"
            health.failed(reason)
            log.error("model_load_failed", model_id=model_id, device=device, reason=reason)
            continue
        log.info("model_inputs", model_id=model_id, device=device, precision=slot.model.precision,
                 jpeg_on_device=slot.model.accepts_jpeg and settings.gpu_jpeg_decode)  # fmt: skip
        health.ready()
    return slots
