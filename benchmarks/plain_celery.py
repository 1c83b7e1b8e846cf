"""The baseline a team would hand-roll: one plain Celery task per frame.

Same Redis, same configuration as framepool (``celeryconfig.celery_config``:
msgpack, acks_late, task events on, prefetch 1, Redis result backend) but
kombu's stock Redis transport; the task
decodes the JPEG at full size with the same simplejpeg call framepool makes and
returns a small dict, which Celery stores in the result backend for the
producer to read back.

    celery -A benchmarks.plain_celery worker -P solo -Q bench.plain   (REDIS_URL from env)

``bench.infer`` is the same baseline with a model (``framepool bench gpu``): one
frame per task, no batching: decode (``framepool.codec.decode``), the model's
own ``preprocess``, a forward pass of batch 1 and ``postprocess``, with the
model (``PLAIN_MODEL`` on ``PLAIN_DEVICE``, in its manifest's precision) loaded
once per worker process, as a hand-rolled worker would keep it in a global.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import simplejpeg
from celery import Celery

from celeryconfig import celery_config
from framepool.settings import Settings

TASK = "bench.decode"
QUEUE = "bench.plain"
INFER_TASK = "bench.infer"
INFER_QUEUE = "bench.plain.infer"

_model: Any = None
_model_lock = threading.Lock()


def _loaded_model() -> Any:
    """``PLAIN_MODEL`` on ``PLAIN_DEVICE``, loaded and warmed up on first use."""
    global _model
    with _model_lock:
        if _model is None:
            from models.registry import load_model

            model_id = os.environ.get("PLAIN_MODEL", "resnet18")
            model = load_model(
                Settings().models_root, model_id, os.environ.get("PLAIN_DEVICE", "cpu")
            )
            model.warmup(batch_size=1)
            _model = model
        return _model


def infer_one(frame: bytes) -> tuple[float, float]:
    """decode + preprocess + forward (batch 1) + postprocess; (done at, forward ms)."""
    import torch

    from framepool.codec import decode

    model = _loaded_model()
    settings = Settings()
    image = decode(frame, max_bytes=settings.max_frame_bytes,
                   max_pixels=settings.max_frame_pixels, min_size=model.manifest.input_size)  # fmt: skip
    x = torch.from_numpy(model.preprocess(image)[None])
    with torch.inference_mode():
        t0 = time.perf_counter()
        raw = model.infer(model.to_device(x))
        out = model.postprocess(raw, [(image.shape[1], image.shape[0])])  # syncs the device
        forward_ms = (time.perf_counter() - t0) * 1000.0
    if len(out) != 1:
        raise RuntimeError(f"{model.id} returned {len(out)} outputs for one frame")
    return time.time(), forward_ms


def make_app(redis_url: str) -> Celery:
    app = Celery("plain", set_as_current=False)
    conf = celery_config(Settings(redis_url=redis_url))
    # kombu's stock Redis transport, as a hand-rolled setup has it (not framepool.broker,
    # whose client reuse would make the baseline faster than what users run)
    conf.pop("broker_transport")
    app.conf.update(conf)

    @app.task(name=TASK, acks_late=True, ignore_result=False, shared=False)
    def decode_frame(frame: bytes, enqueued_at: float) -> dict[str, Any]:
        image = simplejpeg.decode_jpeg(frame, colorspace="RGB", fastdct=True, fastupsample=True)
        return {
            "shape": list(image.shape),
            "enqueued_at": enqueued_at,
            "completed_at": time.time(),
        }

    @app.task(name=INFER_TASK, acks_late=True, ignore_result=False, shared=False)
    def infer_frame(frame: bytes, enqueued_at: float) -> dict[str, Any]:
        done, forward_ms = infer_one(frame)
        return {
            "enqueued_at": enqueued_at,
            "completed_at": done,
            "inference_ms": forward_ms,
            "batch_size": 1,
        }

    return app


#: The worker's app (``celery -A benchmarks.plain_celery``); REDIS_URL from the environment.
app = make_app(os.environ.get("REDIS_URL", Settings().redis_url))
