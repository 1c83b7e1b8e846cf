"""FrameProducer: the SDK cameras and services use to enqueue frames.

Frames are judged before enqueue (format and dimensions from the header, size
and pixel limits) and sent as the ``framepool.infer`` task onto the model's own
queue, with the correlation id in the message header ``correlation_id``.
``submit_many`` sends a whole list in one round trip. Each frame sent gets a
:class:`~producer.frame_handle.FrameHandle`.

With ``FRAME_CLAIM_CHECK`` (the default) a frame's bytes go under a key of their
own (``keys.frame_data(job_id)``) and the message carries only the metadata. A
frame's bytes, its message and its queue's depth check go to Redis in one round
trip, whole lists of frames too (``producer/enqueue.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import redis
from celery import Celery

from framepool import codec, correlation, keys
from framepool.celery_app import create_app
from framepool.errors import BadInput, BrokerUnavailable, QueueFull, UnknownModel
from framepool.manifest import discover
from framepool.schemas import FrameMeta
from framepool.settings import Settings, get_settings
from producer.enqueue import Enqueuer, Outgoing
from producer.frame_handle import FrameHandle
from producer.messages import FrameMessages, Prepared
from producer.result_wait import ResultListener, decode_with

_SERVED_CACHE_SECONDS = 2.0


class FrameProducer:
    """Enqueue frames for inference. ``FrameProducer()`` reads Settings from env/.env."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or create_app(self.settings)
        self.redis = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        self._enqueue = Enqueuer()
        # its own connection pool: its pub/sub connection blocks in reads
        self.results = ResultListener(
            redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=5)
        )
        self._decode = decode_with(self.app.backend)  # one backend, not one per thread
        self._messages = FrameMessages(self.app)
        self._catalog = set(discover(self.settings.models_root)[0])
        self._served: set[str] = set()
        self._served_at = 0.0

    # ----------------------------------------------------------------- public
    def submit(
        self,
        model_id: str,
        frame: bytes | np.ndarray,
        *,
        camera_id: str | None = None,
        seq: int | None = None,
        captured_at: float | None = None,
        correlation_id: str | None = None,
        deadline_ms: float | None = None,
        callback_url: str | None = None,
        latest_wins: bool | None = None,
    ) -> FrameHandle:
        """Enqueue one frame (JPEG/PNG bytes or HxWx3 uint8 array).

        ``deadline_ms`` and ``latest_wins`` default to the model's
        ``LIVE_POLICIES`` entry; ``latest_wins`` needs a ``camera_id``.
        """
        item = self._prepare(
            model_id,
            frame,
            camera_id,
            seq,
            captured_at,
            correlation_id,
            deadline_ms,
            callback_url,
            latest_wins,
        )
        return self._send_all([item])[0]

    def submit_many(self, items: Iterable[Mapping[str, Any]]) -> list[FrameHandle]:
        """Enqueue many frames in one round trip. Each item holds ``submit``'s arguments.

        Every frame is checked before anything is sent. Frames over a queue's
        capacity get a refused handle; under the ``reject`` policy ``QueueFull``
        is raised afterwards, with all handles in ``exc.handles``.
        """
        prepared = []
        for i, item in enumerate(items):
            try:
                prepared.append(self._prepare(**_submit_kwargs(item)))
            except UnknownModel:
                raise  # it names the model, which is what the caller needs
            except BadInput as exc:
                raise type(exc)(f"item {i}: {exc}") from exc
        return self._send_all(prepared)

    def queue_depth(self, model_id: str) -> int:
        """Frames waiting in ``model_id``'s queue (all priority sub-lists)."""
        return self._depths([model_id])[model_id]

    def close(self) -> None:
        self.results.close()
        self.results.client.close()
        self.redis.close()
        self.app.close()

    def __enter__(self) -> FrameProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- private
    def _check_model(self, model_id: str) -> None:
        if model_id in self._catalog or model_id in self._served:
            return
        now = time.monotonic()
        if now - self._served_at > _SERVED_CACHE_SECONDS:
            try:
                self._served = {m.decode() for m in self.redis.smembers(keys.SERVED_MODELS)}
            except redis.RedisError as exc:
                raise BrokerUnavailable.from_redis(exc) from exc
            self._served_at = now
        if model_id not in self._served:
            raise UnknownModel(model_id, list(self._catalog | self._served))

    def _prepare(
        self,
        model_id: str,
        frame: bytes | np.ndarray,
        camera_id: str | None = None,
        seq: int | None = None,
        captured_at: float | None = None,
        correlation_id: str | None = None,
        deadline_ms: float | None = None,
        callback_url: str | None = None,
        latest_wins: bool | None = None,
    ) -> Prepared:
        if not isinstance(model_id, str) or not model_id:
            raise BadInput("model_id must be a non-empty string")
        self._check_model(model_id)
        s = self.settings
        if isinstance(frame, np.ndarray):
            codec.check_array(frame, max_pixels=s.max_frame_pixels)
            frame = codec.encode_jpeg(frame, quality=s.jpeg_quality)
        info = codec.probe(frame, max_bytes=s.max_frame_bytes, max_pixels=s.max_frame_pixels)
        if seq is not None and (not isinstance(seq, int) or seq < 0):
            raise BadInput(f"seq must be a non-negative integer, got {seq!r}")
        policy = s.live_policies.get(model_id)
        if deadline_ms is None and policy is not None:
            deadline_ms = policy.deadline_ms
        if deadline_ms is not None and not deadline_ms > 0:
            raise BadInput(f"deadline_ms must be positive, got {deadline_ms!r}")
        if latest_wins is None:
            latest_wins = policy is not None and policy.latest_wins and camera_id is not None
        elif latest_wins and not camera_id:
            raise BadInput("latest_wins needs a camera_id: it keeps the newest frame per camera")
        if callback_url is not None and not str(callback_url).startswith(("http://", "https://")):
            raise BadInput("callback_url must be an http:// or https:// URL")
        cid = correlation.normalize(correlation_id)
        now = time.time()
        meta: FrameMeta = {
            "model_id": model_id,
            "camera_id": camera_id,
            "seq": seq,
            "captured_at": captured_at,
            "enqueued_at": now,
            "deadline_at": now + deadline_ms / 1000.0 if deadline_ms else None,
            "callback_url": callback_url,
            "latest_wins": bool(latest_wins),
            "format": info.format,
            "width": info.width,
            "height": info.height,
        }
        argsrepr = f"frame<{info.describe()}> model={model_id} cam={camera_id} seq={seq} cid={cid}"
        data = frame if isinstance(frame, bytes) else bytes(frame)
        return Prepared(data, meta, correlation.new_id(), cid, argsrepr)

    def _depths(self, model_ids: Iterable[str]) -> dict[str, int]:
        """Each model's queued frames (all priority lists), in one round trip."""
        ids = list(dict.fromkeys(model_ids))
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for m in ids:
                    for name in keys.queue_lists(m):
                        pipe.llen(name)
                counts = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable.from_redis(exc) from exc
        per = len(keys.queue_lists(ids[0])) if ids else 0
        return {m: sum(counts[i * per : (i + 1) * per]) for i, m in enumerate(ids)}

    def _send_all(self, items: list[Prepared]) -> list[FrameHandle]:
        """Build each frame's message, then enqueue them all in one round trip
        (``producer/enqueue.py``): a frame past its queue's capacity gets a refused
        handle (``QueueFull``), raised under the ``reject`` policy."""
        if not items:
            return []
        s = self.settings
        claim = s.frame_claim_check
        messages = self._messages.build(items, claim)
        outgoing = [
            Outgoing(
                item.meta["model_id"],
                item.job_id,
                queue_list,
                message,
                item.data if claim else None,
                _latest_key(item),
            )  # fmt: skip
            for item, (queue_list, message) in zip(items, messages, strict=True)
        ]
        try:
            placed = self._enqueue(self.redis, outgoing, s.max_queue_depth,
                                   s.frame_ttl_seconds, s.result_ttl_seconds)  # fmt: skip
        except redis.RedisError as exc:
            raise BrokerUnavailable.from_redis(exc, "cannot enqueue") from exc
        handles: list[FrameHandle] = []
        for item, p in zip(items, placed, strict=True):
            if p.accepted:
                handles.append(FrameHandle(self.app, item.job_id, item.correlation_id,
                                           item.meta, None, self.results, self._decode))  # fmt: skip
            else:
                full = QueueFull(item.meta["model_id"], p.depth, s.max_queue_depth)
                handles.append(FrameHandle(self.app, item.job_id, item.correlation_id,
                                           item.meta, full))  # fmt: skip
        refused = [h.refused for h in handles if h.refused is not None]
        if refused and s.queue_full_policy == "reject":
            first = refused[0]
            first.handles = handles  # type: ignore[attr-defined]
            raise first
        return handles


def _latest_key(item: Prepared) -> str:
    """Latest-frame-wins: the key that records the camera's newest job id, else ''."""
    m = item.meta
    if m.get("latest_wins") and m["camera_id"]:
        return keys.latest_frame(m["model_id"], m["camera_id"])
    return ""


_SUBMIT_ARGS = {
    "model_id",
    "frame",
    "camera_id",
    "seq",
    "captured_at",
    "correlation_id",
    "deadline_ms",
    "callback_url",
    "latest_wins",
}


def _submit_kwargs(item: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(item) - _SUBMIT_ARGS
    if unknown:
        raise BadInput(f"unknown submit fields: {', '.join(sorted(unknown))}")
    if "model_id" not in item or "frame" not in item:
        raise BadInput("each item needs model_id and frame")
    return dict(item)
