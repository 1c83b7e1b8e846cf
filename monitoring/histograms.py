"""Cumulative histograms as workers publish them: clean, merge, quantiles, Prometheus buckets.

A worker histogram (``workers/stats.py``) is ``{"buckets": [[le, count], ...], "sum": s,
"count": n}``: counts are cumulative, ``le`` bounds are finite and ascending, and the
``+Inf`` bucket is implicit (its count is ``count``). Heartbeats come from other
processes, so every function here accepts anything and never raises: :func:`clean`
turns garbage into a valid (possibly empty) histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from prometheus_client.utils import floatToGoString

Hist = dict[str, Any]
_NUM = (int, float)
_PAIR = (list, tuple)


def empty() -> Hist:
    return {"buckets": [], "sum": 0.0, "count": 0}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def clean(hist: Any) -> Hist:
    """A valid histogram from ``hist``: pairs sorted by bound, counts non-decreasing."""
    if not isinstance(hist, dict):
        return empty()
    pairs: list[tuple[float, float]] = []
    raw = hist.get("buckets")
    for item in raw if isinstance(raw, list) else ():
        if type(item) not in _PAIR or len(item) != 2:
            continue
        le, n = item
        # type() rather than isinstance(): a bool is not a bound or a count
        if type(le) in _NUM and type(n) in _NUM and n >= 0 and math.isfinite(le + n):
            pairs.append((le, n))
    if any(pairs[i][0] > pairs[i + 1][0] for i in range(len(pairs) - 1)):
        pairs.sort(key=lambda p: p[0])
    buckets: list[list[float | int]] = []
    running: float = 0
    for le, n in pairs:
        running = max(running, n)
        if buckets and buckets[-1][0] == le:
            buckets[-1][1] = running
        else:
            buckets.append([le, running])
    count = _number(hist.get("count"))
    total = _number(hist.get("sum"))
    return {
        "buckets": buckets,
        "sum": total if total is not None else 0.0,
        "count": _int(float(max(running, count if count is not None and count > 0 else 0.0))),
    }


def _int(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def _cumulative_at(buckets: list[list[Any]], le: float) -> float:
    """Count of observations <= ``le`` as far as ``buckets`` tell (largest bound <= le)."""
    best = 0.0
    for bound, n in buckets:
        if bound > le:
            break
        best = n
    return best


def merge(hists: Iterable[Any]) -> Hist:
    """Sum of histograms; bounds are the union (exact when all share the same bounds)."""
    parts = [clean(h) for h in hists]
    parts = [p for p in parts if p["count"] or p["buckets"]]
    if not parts:
        return empty()
    first = [b[0] for b in parts[0]["buckets"]]
    if all([b[0] for b in p["buckets"]] == first for p in parts):
        buckets = [[le, sum(p["buckets"][i][1] for p in parts)] for i, le in enumerate(first)]
    else:
        bounds = sorted({b[0] for p in parts for b in p["buckets"]})
        buckets = [[le, sum(_cumulative_at(p["buckets"], le) for p in parts)] for le in bounds]
    return {
        "buckets": [[le, _int(float(n))] for le, n in buckets],
        "sum": round(sum(p["sum"] for p in parts), 6),
        "count": sum(p["count"] for p in parts),
    }


def quantile_ms(hist: Any, q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation within buckets, like PromQL's
    ``histogram_quantile``: the first bucket's lower bound is 0, and a rank that falls
    in the ``+Inf`` bucket gives the highest finite bound. ``None`` when empty or ``q``
    is outside [0, 1]."""
    if not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
        return None
    h = clean(hist)
    count = h["count"]
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le, n in h["buckets"]:
        if n >= rank and n > below:
            if le <= 0:
                return float(le)
            return lower + (le - lower) * (rank - below) / (n - below)
        lower, below = le, n
    return float(h["buckets"][-1][0]) if h["buckets"] else None


@lru_cache(maxsize=4096)
def _le(le: float, scale: float) -> str:
    return floatToGoString(float(f"{le * scale:.12g}"))


def prometheus_buckets(hist: Any, scale: float = 1.0) -> tuple[list[tuple[str, float]], float]:
    """``(buckets, sum)`` for ``HistogramMetricFamily.add_metric``: bounds times ``scale``
    as Go-style strings, ending with ``+Inf``."""
    h = clean(hist)
    out = [(_le(le, scale), float(n)) for le, n in h["buckets"]]
    out.append(("+Inf", float(h["count"])))
    return out, h["sum"] * scale
