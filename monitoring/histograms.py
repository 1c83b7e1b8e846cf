"""Cumulative histograms as workers publish them: clean, merge, quantiles, Prometheus buckets.

A worker histogram (``workers/stats.py``) is ``{"buckets": [[le, count], ...], "sum": s,
"count": n}``: counts are cumulative, ``le`` bounds are finite and ascending, and the
``+Inf`` bucket is implicit (its count is ``count``). In a heartbeat, workers of this
version send it as counts with the bounds named, not repeated (``workers/heartbeat.py``,
``wire_stats``): ``{"bounds": "ms", "counts": [c, ...], "sum": s, "count": n}``, the
bounds under that name in the model's ``stats.hist_bounds``, the counts stopping where
they reach ``n`` (every later bound counts ``n``); :func:`resolve` turns that form back
into the first and :func:`compact_counts` makes it compact directly. Heartbeats
come from other processes, so every function here accepts anything and never raises:
:func:`clean` turns garbage into a valid (possibly empty) histogram.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import accumulate, chain, compress, islice, repeat
from typing import Any, NamedTuple

from prometheus_client.utils import floatToGoString

Hist = dict[str, Any]
_NUM = (int, float)
_PAIR = (list, tuple)
_NUMBERS = frozenset(_NUM)
_LIST = frozenset({list})
_DICT = frozenset({dict})
_TWO = frozenset({2})
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


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


class Compact(NamedTuple):
    """A clean histogram as tuples (quick to sum): bounds, cumulative counts, sum, count ``n``."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float
    n: int | float


def compact(hist: Any) -> Compact:
    """``clean(hist)`` as a :class:`Compact` (quick for a histogram that is clean already)."""
    raw = hist.get("buckets") if type(hist) is dict else None
    if type(raw) is list and set(map(type, raw)) <= _LIST and set(map(len, raw)) <= _TWO:
        bounds, counts = tuple(map(_first, raw)), tuple(map(_second, raw))
        if (
            set(map(type, bounds)).union(map(type, counts)) <= _NUMBERS
            and math.isfinite(sum(bounds) + sum(counts))
            and all(map(operator.lt, bounds, bounds[1:]))
            and all(map(operator.le, counts, counts[1:]))
            and (not counts or counts[0] >= 0)
        ):
            total, count = _number(hist.get("sum")), _number(hist.get("count"))
            last = counts[-1] if counts else 0
            return Compact(
                bounds,
                counts,
                total if total is not None else 0.0,
                _int(float(max(last, count if count is not None and count > 0 else 0.0))),
            )
    h = clean(hist)
    pairs = h["buckets"]
    return Compact(tuple(b[0] for b in pairs), tuple(b[1] for b in pairs), h["sum"], h["count"])


def compact_many(hists: Sequence[Any]) -> list[Compact]:
    """``[compact(h) for h in hists]``, quicker when they are all clean (what workers send):
    every bucket checked in one pass over all of them rather than one histogram at a time."""
    raws: list[Any] = [h.get("buckets") if type(h) is dict else None for h in hists]
    if not raws or not set(map(type, raws)) <= _LIST:
        return list(map(compact, hists))
    flat = list(chain.from_iterable(raws))
    if not set(map(type, flat)) <= _LIST or not set(map(len, flat)) <= _TWO:
        return list(map(compact, hists))
    bounds, counts = tuple(map(_first, flat)), tuple(map(_second, flat))
    sums = [h.get("sum") for h in hists]
    totals = [h.get("count") for h in hists]
    if not set(map(type, bounds)).union(
        map(type, counts), map(type, sums), map(type, totals)
    ) <= _NUMBERS or not math.isfinite(sum(bounds) + sum(counts) + sum(sums) + sum(totals)):
        return list(map(compact, hists))
    ends = list(accumulate(map(len, raws)))
    ascending = list(map(operator.lt, bounds, bounds[1:]))
    rising = list(map(operator.le, counts, counts[1:]))
    for end in ends[:-1]:
        if 0 < end < len(flat):  # one histogram to the next
            ascending[end - 1] = rising[end - 1] = True
    starts = [0, *ends[:-1]]
    firsts = [counts[s] for s, e in zip(starts, ends, strict=True) if e > s]
    if not all(ascending) or not all(rising) or min(firsts, default=0) < 0:
        return list(map(compact, hists))
    out: list[Compact] = []
    for start, end, total, count in zip(starts, ends, sums, totals, strict=True):
        last = counts[end - 1] if end > start else 0
        n = float(max(last, float(count) if count > 0 else 0.0))
        out.append(Compact(bounds[start:end], counts[start:end], float(total), _int(n)))
    return out


def resolve(hist: Any, bounds: Any) -> Any:
    """A histogram in the count form (module docstring) with ``bounds`` (the model's
    ``hist_bounds``: name -> upper bounds) as ``{"buckets": [[le, count], ...], "sum",
    "count"}``, the bounds past its last count counting ``count``. No buckets when its
    bounds are unknown, fewer than its counts, or some are left and ``count`` is not a
    number. Anything not in the count form is returned as it is."""
    if type(hist) is not dict or "counts" not in hist:
        return hist
    name, counts, total = hist.get("bounds"), hist.get("counts"), hist.get("count")
    les = bounds.get(name) if isinstance(bounds, dict) and isinstance(name, str) else None
    pairs: list[list[Any]] = []
    if type(les) is list and type(counts) is list and len(counts) <= len(les):
        left = len(les) - len(counts)
        if not left or type(total) in _NUM:
            pairs = [[le, n] for le, n in zip(les, [*counts, *[total] * left], strict=True)]
    return {"buckets": pairs, "sum": hist.get("sum"), "count": total}


#: Bound lists seen (their values and types) -> the tuple of them when valid, else None.
_BOUNDS_SEEN: dict[tuple[Any, ...], tuple[float, ...] | None] = {}
_BOUNDS_SEEN_MAX = 256


def _valid_bounds(les: list[Any]) -> tuple[float, ...] | None:
    """``les`` as a tuple when its bounds are numbers, finite and ascending; else None.
    Remembered by value and type: workers send the same few lists in every heartbeat,
    which then also share one tuple."""
    key = (*les, *map(type, les))
    if key in _BOUNDS_SEEN:
        return _BOUNDS_SEEN[key]
    t = tuple(les)
    ok = set(map(type, t)) <= _NUMBERS and math.isfinite(sum(t)) and all(map(operator.lt, t, t[1:]))
    if len(_BOUNDS_SEEN) >= _BOUNDS_SEEN_MAX:
        _BOUNDS_SEEN.clear()
    _BOUNDS_SEEN[key] = found = t if ok else None
    return found


def _clean_bounds(bounds: Any) -> dict[str, tuple[float, ...]]:
    """The valid bound lists of a ``hist_bounds`` table (numbers, finite, ascending), as tuples."""
    out: dict[str, tuple[float, ...]] = {}
    for name, les in bounds.items() if isinstance(bounds, dict) else ():
        if type(les) is list and (t := _valid_bounds(les)) is not None:
            out[name] = t
    return out


def compact_counts(hists: Sequence[Any], bounds: Sequence[Any]) -> list[Compact]:
    """``[compact(resolve(h, b)) for h, b in zip(hists, bounds)]`` (``bounds[i]``: the
    ``hist_bounds`` of the model ``hists[i]`` belongs to), quick when they are all in the
    count form and valid (what workers send): each table of bounds checked once, every
    count of every histogram in one pass, and histograms with the same bounds share one
    tuple of them."""
    if len(hists) != len(bounds):
        raise ValueError("one table of bounds per histogram")
    quick = None
    if set(map(type, hists)) <= _DICT:
        tables = {k: _clean_bounds(b) for k, b in {id(b): b for b in bounds}.items()}
        names = [h.get("bounds") for h in hists]
        les = [tables[id(b)].get(n) if type(n) is str else None for n, b in zip(names, bounds)]  # noqa: B905
        quick = _compact_valid_counts(hists, les) if None not in les else None
    if quick is not None:
        return quick
    return [compact(resolve(h, b)) for h, b in zip(hists, bounds, strict=True)]


def _compact_valid_counts(hists: Sequence[Any], les: list[Any]) -> list[Compact] | None:
    """The compact histograms when every one is valid in the count form with bounds ``les``;
    ``None`` otherwise (the caller then takes them one by one)."""
    counts: list[Any] = [h.get("counts") for h in hists]
    if not set(map(type, counts)) <= _LIST:
        return None
    left = list(map(operator.sub, map(len, les), map(len, counts)))  # bounds counting count
    if min(left, default=0) < 0:
        return None
    flat = list(chain.from_iterable(counts))
    sums = [h.get("sum") for h in hists]
    totals = [h.get("count") for h in hists]
    if not set(map(type, flat)).union(map(type, sums), map(type, totals)) <= _NUMBERS:
        return None
    if not math.isfinite(sum(flat) + sum(sums) + sum(totals)):
        return None
    # counts never go down but from one histogram to the next (where a histogram ends)
    falls = compress(range(len(flat)), map(operator.gt, flat, islice(flat, 1, None)))
    if not set(falls) <= {end - 1 for end in accumulate(map(len, counts[:-1]))}:
        return None
    if min((c[0] for c in counts if c), default=0) < 0:
        return None
    # nor where the counts stop and count goes on
    if any(n and t < (c[-1] if c else 0) for c, t, n in zip(counts, totals, left)):  # noqa: B905
        return None
    full = [(*c, *(t,) * n) if n else tuple(c) for c, t, n in zip(counts, totals, left)]  # noqa: B905
    lasts = [c[-1] if c else 0 for c in full]
    # as compact() counts: at least the last bucket's, a count <= 0 read as none
    ns = [n if type(n) is int and -_EXACT < n < _EXACT else _int(float(n))
          for n in map(max, lasts, totals, repeat(0))]  # fmt: skip
    return list(map(Compact._make, zip(les, full, map(float, sums), ns, strict=True)))


#: Integers that float() keeps exactly (``_int(float(n)) == n`` below it).
_EXACT = 2**53


def _cumulative_at(part: Compact, le: float) -> float:
    """Count of observations <= ``le`` as far as ``part`` tells (largest bound <= le)."""
    best = 0.0
    for bound, n in zip(part.bounds, part.counts, strict=True):
        if bound > le:
            break
        best = n
    return best


def merge(hists: Iterable[Any]) -> Hist:
    """Sum of histograms; bounds are the union (exact when all share the same bounds)."""
    return merge_compact(compact(h) for h in hists)


def merge_compact(parts: Iterable[Compact]) -> Hist:
    """:func:`merge` of histograms already made :func:`compact`."""
    live = [p for p in parts if p.n or p.bounds]
    if not live:
        return empty()
    first = live[0].bounds
    if all(p.bounds == first for p in live):
        counts: Iterable[float] = map(sum, zip(*(p.counts for p in live), strict=True))
        bounds: Iterable[float] = first
    else:
        bounds = sorted({le for p in live for le in p.bounds})
        counts = [sum(_cumulative_at(p, le) for p in live) for le in bounds]
    return {
        "buckets": [[le, _int(float(n))] for le, n in zip(bounds, counts, strict=False)],
        "sum": round(sum(p.sum for p in live), 6),
        "count": sum(p.n for p in live),
    }


def merge_raw(hists: Sequence[Any]) -> Hist:
    """:func:`merge` of ``hists``; quicker when they are all clean and share their bounds
    (what workers send), checked for all of them at once rather than one by one."""
    quick = _merge_same_bounds(hists)
    return quick if quick is not None else merge(hists)


def _merge_same_bounds(hists: Sequence[Any]) -> Hist | None:
    """The merge of clean histograms with the same non-empty bounds; ``None`` for any other."""
    raws: list[Any] = [h.get("buckets") if type(h) is dict else None for h in hists]
    if not raws or not set(map(type, raws)) <= _LIST:
        return None
    n = len(raws[0])
    if n == 0 or set(map(len, raws)) != {n}:
        return None
    flat = list(chain.from_iterable(raws))
    if not set(map(type, flat)) <= _LIST or not set(map(len, flat)) <= _TWO:
        return None
    bounds, counts = list(map(_first, flat)), list(map(_second, flat))
    first = bounds[:n]
    if (
        not set(map(type, bounds)).union(map(type, counts)) <= _NUMBERS
        or bounds != first * len(raws)
        or not math.isfinite(sum(first) + sum(counts))
        or not all(map(operator.lt, first, first[1:]))
        or min(counts[::n]) < 0
    ):
        return None
    rising = list(map(operator.le, counts, counts[1:]))
    rising[n - 1 :: n] = [True] * len(rising[n - 1 :: n])  # one histogram to the next
    if not all(rising):
        return None
    sums = [h.get("sum") for h in hists]
    totals = [h.get("count") for h in hists]
    if not set(map(type, sums)).union(map(type, totals)) <= _NUMBERS or not math.isfinite(
        sum(sums) + sum(totals)
    ):
        return None
    # as clean() makes them: a histogram's count is at least its last bucket's
    observed = map(_int, map(float, map(max, counts[n - 1 :: n], totals, repeat(0.0))))
    return {
        "buckets": [[le, _int(float(sum(counts[i::n])))] for i, le in enumerate(first)],
        "sum": round(sum(map(float, sums)), 6),
        "count": sum(observed),
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
