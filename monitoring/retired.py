"""Histograms of workers that have gone, kept so that per-model sums never go down.

``/metrics`` exports each model's histograms summed over its workers. When a
worker stops, or restarts and counts from zero again, its share would leave the
sum, and Prometheus would read the drop as a counter reset (``rate()`` then takes
the whole remaining sum for new observations). So :class:`RetiredHistograms`
keeps the last histograms seen from each worker incarnation (worker name, pid,
``started_at``) once it is no longer live, and the collector adds them in. An
incarnation that comes back (its heartbeat had only expired for a while) is live
again and no longer counted twice. Past ``keep`` incarnations the oldest are
folded into one sum per model. A monitor restart starts from zero, as any
exporter's restart does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from monitoring import histograms
from monitoring.cluster_views import WorkerView
from monitoring.model_hists import merge_model_hists, model_hists

#: One model's histograms: ``timings_ms`` (stage -> histogram), ``batch_size_hist``,
#: ``frame_size_bytes``; as ``Compact`` inside, as ``Hist`` in :meth:`RetiredHistograms.sums`.
ModelHists = dict[str, Any]
_Key = tuple[str, str, tuple[Any, Any]]  # worker, model, (pid, started_at)


class RetiredHistograms:
    """See the module docstring; :meth:`update` with every snapshot's live workers."""

    def __init__(self, keep: int = 512) -> None:
        self.keep = keep
        self._workers: dict[str, tuple[dict[str, Any], list[_Key], WorkerView]] = {}
        self._live: dict[_Key, WorkerView] = {}
        self._retired: dict[_Key, ModelHists] = {}  # oldest first
        self._folded: dict[str, ModelHists] = {}
        self._sums: dict[str, ModelHists] = {}

    def update(self, workers: Iterable[WorkerView]) -> dict[str, ModelHists]:
        """Take note of the live workers; the retired histograms per model (``Hist`` form)."""
        seen: dict[str, tuple[dict[str, Any], list[_Key], WorkerView]] = {}
        changed = False
        for w in workers:
            known = self._workers.get(w.name)
            if known is not None and known[0] is w.raw:  # the same heartbeat as last time
                seen[w.name] = known
                continue
            incarnation = (w.pid, w.raw.get("started_at"))
            keys = [(w.name, m, incarnation) for m, e in w.models.items()
                    if isinstance(e.get("stats"), dict)]  # fmt: skip
            seen[w.name] = (w.raw, keys, w)
            changed = True
        if not changed and seen.keys() == self._workers.keys():
            return self._sums
        self._workers = seen
        live = {key: w for _, keys, w in seen.values() for key in keys}
        retired = False
        for key in live.keys() & self._retired.keys():
            del self._retired[key]  # back again
            retired = True
        for key in self._live.keys() - live.keys():
            self._retired[key] = model_hists(self._live[key], key[1])
            retired = True
        self._live = live
        while len(self._retired) > self.keep:
            key = next(iter(self._retired))
            part = self._retired.pop(key)
            folded = self._folded.get(key[1])
            self._folded[key[1]] = part if folded is None else _compact(_add([folded, part]))
        if retired:
            self._sums = self._compute()
        return self._sums

    def _compute(self) -> dict[str, ModelHists]:
        per_model: dict[str, list[ModelHists]] = {m: [h] for m, h in self._folded.items()}
        for (_, model_id, _), hists in self._retired.items():
            per_model.setdefault(model_id, []).append(hists)
        return {m: _add(parts) for m, parts in sorted(per_model.items())}


def _add(parts: list[ModelHists]) -> ModelHists:
    return merge_model_hists(parts)


def _compact(hists: ModelHists) -> ModelHists:
    return {
        "timings_ms": {s: histograms.compact(h) for s, h in hists["timings_ms"].items()},
        "batch_size_hist": histograms.compact(hists["batch_size_hist"]),
        "frame_size_bytes": histograms.compact(hists["frame_size_bytes"]),
    }
