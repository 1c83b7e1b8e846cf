"""A model's histograms over its workers: each heartbeat's made compact once, summed when read.

The reader calls :func:`prepare_hists` when it parses a heartbeat: every histogram
of the heartbeat is checked and made compact (``histograms.Compact``) at once, in
the count form workers send (``histograms.compact_counts``) or in an older worker's
bucket pairs (``histograms.compact_many``), and kept in the view's ``memo``. A scrape
then only adds up compact parts (:func:`merged`), once per model and set of
heartbeats. Checking them at the scrape instead would spare the heartbeats replaced
before any scrape (two in three at a 5 s heartbeat and a 15 s scrape), but would add
~6-12 ms to every ``/metrics`` on a new snapshot, whose goal is 20 ms. The retired
workers' histograms (``monitoring/retired.py``) are kept in the compact form too.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from operator import is_
from typing import Any

from monitoring import histograms
from monitoring.cluster_views import WorkerView


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


_PREPARED = ("hists", None)  # in w.memo once prepare_hists ran


def prepare_hists(w: WorkerView) -> None:
    """Compact (validate) every histogram of the heartbeat once into ``w.memo`` for
    :func:`model_hists`, those of all models at once: in the count form (each model's
    ``stats.hist_bounds``, what workers send) with ``histograms.compact_counts``, the
    others (older workers) with ``histograms.compact_many``."""
    memo = w.memo
    if _PREPARED in memo:
        return
    layout: list[tuple[str, list[str], bool]] = []
    counted: list[Any] = []
    tables: list[Any] = []
    pairs: list[Any] = []
    for model_id, entry in w.models.items():
        stats = _dict(entry.get("stats"))
        timings = _dict(stats.get("timings_ms"))
        hists = [*timings.values(), stats.get("batch_size_hist"), stats.get("frame_size_bytes")]
        bounds = stats.get("hist_bounds")
        if bounds is not None:
            counted += hists
            tables += [bounds] * len(hists)
        else:
            pairs += hists
        layout.append((model_id, [str(stage) for stage in timings], bounds is not None))
    done = {True: iter(histograms.compact_counts(counted, tables)),
            False: iter(histograms.compact_many(pairs))}  # fmt: skip
    for model_id, stages, form in layout:
        parts = done[form]
        memo[("hists", model_id)] = {
            "timings_ms": {stage: next(parts) for stage in stages},
            "batch_size_hist": next(parts),
            "frame_size_bytes": next(parts),
        }
    memo[_PREPARED] = True


def model_hists(w: WorkerView, model_id: str) -> dict[str, Any]:
    """The worker's histograms of one model as :class:`~monitoring.histograms.Compact`:
    ``timings_ms`` (stage -> histogram), ``batch_size_hist``, ``frame_size_bytes``;
    computed once per heartbeat (kept in ``w.memo``, see :func:`prepare_hists`)."""
    key = ("hists", model_id)
    found = w.memo.get(key)
    if found is None:
        prepare_hists(w)
        found = w.memo.get(key)
    if found is None:  # a model the heartbeat does not serve: no histograms
        found = {
            "timings_ms": {},
            "batch_size_hist": histograms.compact(None),
            "frame_size_bytes": histograms.compact(None),
        }
    return found


#: Sums per model kept by the reader across snapshots: the parts summed last, their sum.
Sums = MutableMapping[str, tuple[list[Any], dict[str, Any]]]


def merged(model_id: str, workers: list[WorkerView], sums: Sums | None = None) -> dict[str, Any]:
    """The model's histograms summed over ``workers`` (which serve it), as ``Hist`` dicts:
    the sum of their compact histograms (:func:`model_hists`), or the last sum while they
    are the same (``sums``)."""
    parts = [model_hists(w, model_id) for w in workers]
    last = sums.get(model_id) if sums is not None else None
    if last is not None and len(last[0]) == len(parts) and all(map(is_, last[0], parts)):
        return last[1]
    out = merge_model_hists(parts)
    if sums is not None:
        sums[model_id] = (parts, out)
    return out


def merge_model_hists(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several :func:`model_hists` (``Compact`` in), as ``Hist`` dicts."""
    stages: dict[str, list[histograms.Compact]] = {}
    for h in parts:
        for stage, part in h["timings_ms"].items():
            stages.setdefault(stage, []).append(part)
    return {
        "timings_ms": {stage: histograms.merge_compact(ps) for stage, ps in sorted(stages.items())},
        "batch_size_hist": histograms.merge_compact(h["batch_size_hist"] for h in parts),
        "frame_size_bytes": histograms.merge_compact(h["frame_size_bytes"] for h in parts),
    }
