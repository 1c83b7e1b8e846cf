"""ClusterReader: the whole cluster from Redis in a few round trips, as a ClusterSnapshot.

Each :meth:`ClusterReader.read`:

1. one pipeline: ``SMEMBERS`` of ``keys.WORKERS`` and ``keys.SERVED_MODELS``, and for
   the workers and models of the last read, ``GETRANGE`` of the first 2 KB of every
   heartbeat key and, per model, ``LLEN`` and ``LINDEX -1`` of its queue list,
   ``HGETALL`` of its drop counter, and one ``EXISTS`` over the priority sub-lists
   (models: served ones, manifests under ``MODELS_ROOT`` and those the heartbeats
   name; :class:`monitoring.queues.QueueReads`);
2. one ``MGET`` of the heartbeats that changed since the last read, and of those of
   workers new to it (a heartbeat whose first bytes, which hold its ``updated_at``,
   are unchanged is not fetched or parsed again: :mod:`monitoring.heartbeat_cache`);
3. only when a new heartbeat names kernel tables whose stamp the reader has no rows
   for (the worker profiled), one ``MGET`` of those tables (``keys.worker_kernels``);
4. only for models the last read did not know, or priority sub-lists that now hold
   frames, the queue commands for them.

A name in ``keys.WORKERS`` whose heartbeat key has expired is listed in
``snapshot.gone``; the reader notes when it first saw it gone and removes it from
``keys.WORKERS`` once it has been gone for :data:`GONE_FORGET_S` (a restarted
monitor starts counting again, so it lists such a name for up to another 10
minutes). Garbage under any key never raises (bad heartbeat JSON gives a worker
in state ``invalid``; an unreadable queue message gives no age); an unreachable
Redis raises ``redis.RedisError`` for the caller to report.

Views of unchanged heartbeats, and the merged kernel tables when no worker's kernel
rows changed, are shared with the previous snapshot: treat snapshots as read-only.

The views and helpers are defined in :mod:`monitoring.cluster_views`,
:mod:`monitoring.cluster_build` and :mod:`monitoring.histograms` and exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from framepool import keys
from framepool.log import get_logger
from framepool.manifest import discover
from framepool.settings import Settings
from monitoring.cluster_build import (
    STATE_ORDER,
    build_devices,
    build_models,
    device_key,
)
from monitoring.cluster_views import (
    ClusterSnapshot,
    DeviceView,
    ModelView,
    QueueView,
    WorkerView,
)
from monitoring.heartbeat_cache import PREFIX_BYTES, HeartbeatCache
from monitoring.histograms import quantile_ms
from monitoring.queues import QueueReads, StampMemo
from monitoring.retired import RetiredHistograms

__all__ = [
    "STATE_ORDER",
    "ClusterReader",
    "ClusterSnapshot",
    "DeviceView",
    "ModelView",
    "QueueView",
    "WorkerView",
    "device_key",
    "quantile_ms",
]

log = get_logger(__name__)

#: Seconds a worker stays in ``snapshot.gone`` before its name leaves ``keys.WORKERS``.
GONE_FORGET_S = 600.0
#: Seconds the list of manifests under ``MODELS_ROOT`` is reused.
MANIFEST_CACHE_S = 30.0


def _same_kernels(now: dict[str, Any], then: dict[str, Any]) -> bool:
    """Whether two heartbeats' model entries hold the very same kernel lists (or none)."""
    if now.keys() != then.keys():
        return False
    for model_id, entry in now.items():
        a, b = entry.get("kernels"), then[model_id].get("kernels")
        if a is not b and (a or b):
            return False
    return True


#: The prefix of a heartbeat not asked for (a worker the last read did not list).
_UNREAD: Any = object()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _members(reply: Any) -> set[str]:
    return {_text(v) for v in reply} if isinstance(reply, set | list | tuple) else set()


class ClusterReader:
    """Reads heartbeats, queues and drop counters; see the module docstring."""

    def __init__(
        self, client: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self._gone_since: dict[str, float] = {}
        self._manifests: set[str] = set()
        self._manifests_at: float | None = None
        self._heartbeats = HeartbeatCache()
        self._retired = RetiredHistograms()
        self._stamps: StampMemo = {}
        self._sums: dict[str, tuple[list[Any], dict[str, Any]]] = {}  # model -> parts, their sum
        self._kernel_inputs: list[tuple[str, dict[str, Any]]] = []
        self._kernel_cache: dict[Any, Any] = {}
        self._names: list[str] = []  # the workers and models of the last read
        self._models: list[str] = []
        self._busy: set[str] = set()  # priority sub-lists that held frames then

    def read(self) -> ClusterSnapshot:
        now = self.clock()
        names_then = self._names
        reads = QueueReads(self._models, self._busy)
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(keys.WORKERS)
        pipe.smembers(keys.SERVED_MODELS)
        for name in names_then:  # the workers and models of the last read: one round trip
            pipe.getrange(keys.worker_heartbeat(name), 0, PREFIX_BYTES - 1)
        reads.add_commands(pipe)
        replies = pipe.execute(raise_on_error=False)
        names = sorted(_members(replies[0]))
        candidates = sorted(_members(replies[1]) | self._manifest_ids(now))
        prefixes = dict(zip(names_then, replies[2 : 2 + len(names_then)], strict=True))
        reads.take(replies[2 + len(names_then) :])

        views = self._heartbeat_views(names, [prefixes.get(n, _UNREAD) for n in names], now)
        workers = [v for v in views if v is not None]
        gone = [n for n, v in zip(names, views, strict=True) if v is None]
        extra = sorted({m for w in workers for m in w.models} - set(candidates))
        known = candidates + extra
        new = [m for m in known if m not in reads.lists]  # models the last read did not know
        more = QueueReads(new, {ls for m in new for ls in keys.queue_lists(m)})
        if new or reads.idle_busy():  # their queues, and sub-lists that now hold frames
            pipe = self.client.pipeline(transaction=False)
            more.add_commands(pipe)
            if reads.idle_busy():
                reads.add_idle(pipe)
            rest = more.take(pipe.execute(raise_on_error=False))
            if reads.idle_busy():
                reads.take_idle(rest)
        self._names, self._models, self._busy = names, known, reads.busy() | more.busy()

        queues: dict[str, QueueView] = {}
        for model_id in known:
            source = reads if model_id in reads.lists else more
            reading = source.reading(model_id, self._stamps)
            oldest = reading.oldest_enqueued_at
            queues[model_id] = QueueView(
                model_id=model_id,
                queue=keys.queue_name(model_id),
                depth=reading.depth,
                oldest_age_s=None if oldest is None else round(max(0.0, now - oldest), 6),
                dropped=reading.dropped,
            )
        devices = build_devices(workers)
        snap = ClusterSnapshot(
            taken_at=now,
            workers=workers,
            gone=self._track_gone(gone, now),
            queues=dict(sorted(queues.items())),
            devices=devices,
            models=build_models(workers, known, self._sums),
            gpu_available=any(d.has_reading for d in devices),
            retired=self._retired.update(workers),
        )
        snap._kernel_cache = self._kernel_cache_for(workers)
        return snap

    def _heartbeat_views(
        self, names: list[str], prefixes: list[Any], now: float
    ) -> list[WorkerView | None]:
        """A view per name (``None``: no heartbeat); fetches and parses only changed ones."""
        views: list[WorkerView | None] = [None] * len(names)
        fetch: list[int] = []
        for i, (name, prefix) in enumerate(zip(names, prefixes, strict=True)):
            if prefix is _UNREAD:  # a worker new to this reader
                fetch.append(i)
                continue
            if isinstance(prefix, str):
                prefix = prefix.encode()
            if not isinstance(prefix, bytes) or not prefix:
                continue  # expired (or not a string key)
            views[i] = self._heartbeats.current(name, prefix, now)
            if views[i] is None:
                fetch.append(i)
        if fetch:
            values = self.client.mget([keys.worker_heartbeat(names[i]) for i in fetch])
            for i, value in zip(fetch, values, strict=True):
                views[i] = self._heartbeats.parse(names[i], value, now) if value else None
        wanted = self._heartbeats.wanted()  # new kernel stamps: fetch those tables
        if wanted:
            at = {name: i for i, name in enumerate(names)}
            tables = self.client.mget([keys.worker_kernels(n) for n in wanted])
            for (name, stamp), value in zip(wanted.items(), tables, strict=True):
                view = self._heartbeats.attach(name, stamp, value)
                if view is not None:
                    views[at[name]] = view
        self._heartbeats.keep(n for n, v in zip(names, views, strict=True) if v is not None)
        return views

    def _kernel_cache_for(self, workers: list[WorkerView]) -> dict[Any, Any]:
        """The previous snapshot's merged kernel tables while every worker's kernel rows are
        the very lists it merged (a heartbeat with unchanged rows reuses its list), else new."""
        inputs = [(w.name, w.models) for w in workers]
        before = self._kernel_inputs
        same = len(inputs) == len(before) and all(
            a[0] == b[0] and (a[1] is b[1] or _same_kernels(a[1], b[1]))
            for a, b in zip(inputs, before, strict=True)
        )
        if not same:
            self._kernel_cache = {}
        self._kernel_inputs = inputs  # holds the lists, so their ids stay theirs
        return self._kernel_cache

    def _manifest_ids(self, now: float) -> set[str]:
        at = self._manifests_at
        if at is None or not 0 <= now - at < MANIFEST_CACHE_S:
            try:
                self._manifests = set(discover(self.settings.models_root)[0])
            except OSError as exc:
                log.warning("manifest_discovery_failed", error=str(exc))
            self._manifests_at = now
        return self._manifests

    def _track_gone(self, gone: Iterable[str], now: float) -> list[str]:
        """Names still listed as gone; forgets (SREM) the ones gone for GONE_FORGET_S."""
        since = {n: self._gone_since.get(n, now) for n in gone}
        self._gone_since = since
        expired = [n for n, t in since.items() if now - t >= GONE_FORGET_S]
        if expired:
            try:
                self.client.srem(keys.WORKERS, *expired)
            except redis.RedisError as exc:
                log.warning("gone_workers_forget_failed", error=str(exc), workers=expired)
            else:
                log.info("gone_workers_forgotten", workers=expired)
                for n in expired:
                    del self._gone_since[n]
        return sorted(n for n in since if n not in expired)
