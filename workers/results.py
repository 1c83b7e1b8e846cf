"""Building InferenceResult dicts and writing them: the result store, each camera's stream."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack
import orjson
import redis
from celery import states

from framepool import broker_qos, keys
from framepool.errors import ResultNotStored
from framepool.log import get_logger
from framepool.schemas import FrameMeta, Status

log = get_logger(__name__)


@dataclass(slots=True)
class Origin:
    """Where a result was produced."""

    worker: str
    device: str
    model_version: str | None = None


@dataclass(slots=True)
class FrameRecord:
    """Everything known about one frame in the worker, for its result."""

    job_id: str
    correlation_id: str
    meta: FrameMeta
    timings: dict[str, float] = field(default_factory=dict)
    # delivered before (its worker died, or a visibility timeout passed): it runs
    # alone, and its encoded frame is kept for a dead letter
    redelivered: bool = False
    frame: bytes | None = None

    @property
    def deadline_at(self) -> float | None:
        return self.meta.get("deadline_at")


def build_result(
    rec: FrameRecord,
    origin: Origin,
    status: Status,
    *,
    outputs: dict[str, Any] | None = None,
    error: BaseException | tuple[str, str] | None = None,
    batch_size: int = 0,
) -> dict[str, Any]:
    """The result as a plain dict with InferenceResult's fields (msgpack/JSON-ready)."""
    meta = rec.meta
    now = time.time()
    timings = {
        "queue": 0.0,
        "batch_wait": 0.0,
        "decode": 0.0,
        "preprocess": 0.0,
        "host_to_device": 0.0,
        "inference": 0.0,
        "postprocess": 0.0,
        **rec.timings,
    }
    timings["total"] = max(0.0, (now - meta["enqueued_at"]) * 1000.0)
    err: dict[str, str] | None = None
    if isinstance(error, BaseException):
        err = {"type": type(error).__name__, "message": str(error)}
    elif error is not None:
        err = {"type": error[0], "message": error[1]}
    return {
        "job_id": rec.job_id,
        "correlation_id": rec.correlation_id,
        "model_id": meta["model_id"],
        "model_version": origin.model_version,
        "camera_id": meta.get("camera_id"),
        "seq": meta.get("seq"),
        "status": status.value,
        "error": err,
        "outputs": outputs or {},
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
        "captured_at": meta.get("captured_at"),
        "enqueued_at": meta["enqueued_at"],
        "completed_at": now,
        "worker": origin.worker,
        "device": origin.device,
        "batch_size": batch_size,
    }


# Writes each result once per job_id: Celery's result key (SET + PUBLISH, as
# Celery's Redis backend does, so AsyncResult.get and the gateway's waiter see
# it), then its camera's stream, and marks, per (camera, model), a result that
# arrives after one of a later frame: ``order`` is "late" when its seq is below
# the highest appended so far *and* it was enqueued before that one (a camera
# that restarts its seq from 0 is not late, it starts over). A job_id already
# written (a frame executed twice: redelivered after a lost worker or a
# visibility timeout) writes nothing and is returned. The claim-checked frame's
# bytes are deleted either way.
# Then the unacked entries of the frames' deliveries are removed (kombu's unacked
# hash and index, as its ack does): the task's ack that follows is local only.
# KEYS per result: its done marker, its stream and order hash ("" without camera),
# its Celery result key, its frame key; then, when there are entries to remove,
# the unacked hash and its index.
# ARGV: maxlen, ttl, then per result model_id, seq (-1: none), enqueued_at,
# job_id, status, result JSON (for the stream), Celery's encoded result; then the
# delivery tags whose entries to remove.
_APPEND = """
local maxlen, ttl = ARGV[1], ARGV[2]
local dups = {}
local n = math.floor(#KEYS / 5)
for i = 1, n do
  local k = 5 * (i - 1)
  local done, stream, order = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local a = 3 + (i - 1) * 7
  if not redis.call('SET', done, '1', 'NX', 'EX', ttl) then
    table.insert(dups, ARGV[a + 3])
  else
    redis.call('SET', KEYS[k + 4], ARGV[a + 6], 'EX', ttl)
    redis.call('PUBLISH', KEYS[k + 4], ARGV[a + 6])
    if stream ~= '' then
      local model, seq, enq = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
      local mark = 'in'
      if seq >= 0 then
        local last = redis.call('HGET', order, model)
        local sep = last and string.find(last, ':', 1, true)
        if sep and seq < tonumber(string.sub(last, 1, sep - 1))
            and enq < tonumber(string.sub(last, sep + 1)) then
          mark = 'late'
        else
          redis.call('HSET', order, model, ARGV[a + 1] .. ':' .. ARGV[a + 2])
        end
      end
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'job_id', ARGV[a + 3],
                 'seq', ARGV[a + 1], 'status', ARGV[a + 4], 'order', mark,
                 'result', ARGV[a + 5])
    end
  end
  redis.call('DEL', KEYS[k + 5])
end
if #KEYS == 5 * n + 2 then
  for j = 3 + 7 * n, #ARGV do
    redis.call('HDEL', KEYS[5 * n + 1], ARGV[j])
    redis.call('ZREM', KEYS[5 * n + 2], ARGV[j])
  end
end
return dups
"""


def _plain(value: Any) -> Any:
    """What orjson cannot write on its own: numpy scalars and arrays (a model's
    outputs may hold them) as Python numbers and lists."""
    item = getattr(value, "tolist", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def result_json(result: Mapping[str, Any]) -> bytes:
    """A result as compact JSON, as the camera streams and webhooks carry it. Written by
    orjson (~10x quicker than ``json.dumps`` for a result); NaN and infinities become
    ``null``, since JSON has none (a browser's ``JSON.parse`` refuses them), numpy
    values become numbers, and non-string keys strings."""
    return orjson.dumps(result, default=_plain, option=orjson.OPT_NON_STR_KEYS)


def celery_result(result: Mapping[str, Any]) -> bytes:
    """``result`` as Celery's Redis backend stores a task's success (the same fields, the
    same serializer: ``result_serializer`` is msgpack in celeryconfig)."""
    meta = {
        "status": states.SUCCESS,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat(),
        "task_id": result["job_id"],
    }
    return msgpack.packb(meta, use_bin_type=True)


def drop_reason(result: Mapping[str, Any]) -> str | None:
    """Why a frame was dropped before inference (``expired``/``superseded``), or None.

    (The same counter hash holds ``queue_full``, counted by the producer, and
    ``duplicate``: a second execution's result, not written again.)"""
    if result["status"] != Status.expired.value:
        return None
    err = result.get("error") or {}
    return "superseded" if err.get("type") == "Superseded" else "expired"


class ResultWriter:
    """Writes each batch's results once per job_id: Celery's result keys, the camera
    streams (in ``seq`` order per model, late ones marked), the drop and duplicate
    counts, deletes the claim-checked frames and removes the frames' unacked entries
    (``framepool.broker_qos.entries_for``; their acks then need no round trip of their
    own); one round trip per batch."""

    def __init__(self, client: redis.Redis, maxlen: int, ttl_s: int = 3600) -> None:
        self.client = client
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self._append = client.register_script(_APPEND)

    def write(self, results: Iterable[Mapping[str, Any]]) -> set[str]:
        """Write ``results``; the job ids that had been written before (duplicates).

        A batch's frames were decoded by several threads and reach the runner in the
        order their decodes ended; they are written in the order they were enqueued,
        so two frames of a camera in one batch appear on its stream in seq order."""
        script_keys: list[str] = []
        args: list[Any] = [self.maxlen, self.ttl_s]
        drops: Counter[tuple[str, str]] = Counter()
        models: dict[str, str] = {}
        for r in sorted(results, key=lambda r: float(r.get("enqueued_at") or 0.0)):
            reason = drop_reason(r)
            if reason is not None:
                drops[(r["model_id"], reason)] += 1
            camera = r.get("camera_id")
            models[r["job_id"]] = r["model_id"]
            script_keys += [
                keys.result_done(r["job_id"]),
                keys.result_stream(camera) if camera else "",
                keys.result_order(camera) if camera else "",
                keys.celery_result(r["job_id"]),
                keys.frame_data(r["job_id"]),
            ]
            seq = r.get("seq")
            args += [
                r["model_id"],
                -1 if seq is None else seq,
                repr(float(r.get("enqueued_at") or 0.0)),
                r["job_id"],
                r["status"],
                result_json(r) if camera else "",
                celery_result(r),
            ]
        if not script_keys:
            return set()
        unacked_keys, tags, entries = broker_qos.entries_for(models)
        if tags:
            script_keys += unacked_keys
            args += tags
        try:
            # EVALSHA straight on the client: one round trip (in a redis-py pipeline a
            # script costs a SCRIPT EXISTS round trip first, on every execute)
            written_before = self._append(keys=script_keys, args=args)
        except redis.RedisError as exc:
            # Nothing is acked before its result is stored: the frames go back to
            # their queues (ResultNotStored) and are answered once Redis is back.
            log.error("result_write_failed", error=str(exc), results=len(models))
            raise ResultNotStored(f"cannot write results to Redis: {exc}") from exc
        broker_qos.removed_in_redis(entries)
        dups = {_text(j) for j in written_before or []}
        for job_id in dups:
            drops[(models[job_id], "duplicate")] += 1
            log.warning("result_duplicate", job_id=job_id, model_id=models[job_id])
        if drops:
            self._count(drops)
        return dups

    def _count(self, drops: Counter[tuple[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for (model_id, reason), n in drops.items():
            pipe.hincrby(keys.dropped_counter(model_id), reason, n)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("drop_count_failed", error=str(exc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
