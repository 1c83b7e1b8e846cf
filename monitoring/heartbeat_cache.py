"""Each heartbeat parsed once per write: the reader's cache of worker views.

Workers rewrite their heartbeat every ``HEARTBEAT_INTERVAL_SECONDS`` (5 s) while
the monitor reads every second. So :class:`ClusterReader` works in steps:

1. it fetches the first :data:`PREFIX_BYTES` of every heartbeat (``GETRANGE``).
   A worker writes ``updated_at`` there (before ``nvml`` and ``models``, see
   ``workers/snapshot.py``) and every write stamps a new one, so a prefix equal to
   the cached one that holds ``"updated_at"``, or that is the whole value, means
   the same heartbeat: :meth:`HeartbeatCache.current` returns the cached view with
   its age brought up to date;
2. it fetches the other heartbeats whole, and :meth:`HeartbeatCache.parse` parses
   them (:func:`loads`: orjson, or ``json.loads`` for what orjson refuses);
3. kernel tables. A worker of this version publishes its kernel rows under
   ``keys.worker_kernels(name)``, rewritten only after profiling, and names their
   version in the heartbeat (``"kernels": {"stamp": s, "rows": {model_id: n}}``,
   ``workers/heartbeat.py``). A new heartbeat with the stamp whose rows the cache
   holds gets those very lists again; one with a new stamp is listed by
   :meth:`HeartbeatCache.wanted`, and the reader fetches those tables (one ``MGET``)
   and hands them to :meth:`HeartbeatCache.attach`. An older worker still sends its
   rows inline (``models.<id>.kernels``, a cluster in the middle of a rolling
   upgrade): :func:`parse_heartbeat` cuts those arrays out before parsing and reuses
   the lists parsed from the same bytes last time. Either way each model entry of
   a view holds its rows under ``kernels`` as before, the same list objects while
   they do not change (so the merged kernel table can be reused too).

Views are shared between snapshots and must not be mutated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from monitoring.cluster_build import parse_worker
from monitoring.cluster_views import WorkerView
from monitoring.model_hists import prepare_hists

#: Bytes of a heartbeat fetched to tell whether it changed.
PREFIX_BYTES = 2048
_STAMP = b'"updated_at"'
_KERNELS = b'"kernels":['


#: A kernel array seen before: its bytes and the list they parse to.
Known = list[tuple[bytes, Any]]
#: A worker's kernel tables: model id -> rows (``KernelTable.top()`` dicts).
Tables = dict[str, list[Any]]


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``, parsed by orjson (3-5x quicker); what orjson refuses (NaN,
    a BOM, lone surrogates, ...) by ``json.loads``, which raises when it too refuses.
    One difference is kept: orjson reads an integer beyond 64 bits as a float."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _cut_kernels(raw: bytes, known: Known) -> tuple[bytes, list[bytes], list[Any]]:
    """``raw`` with each non-empty ``"kernels":[...]`` value replaced by ``null``; the values'
    bytes; and for each the list from ``known`` when it is one of those bytes, else ``None``.

    A value equal to the known one at the same place is recognised without scanning
    it (``startswith`` at its offset). Otherwise its end is taken to be the first
    ``}]`` after its start; a kernel name holding ``}]`` gives a wrong cut, which
    :func:`parse_heartbeat` detects.
    """
    pieces: list[bytes] = []
    spans: list[bytes] = []
    lists: list[Any] = []
    at = 0
    while (i := raw.find(_KERNELS, at)) >= 0:
        start = i + len(_KERNELS) - 1  # the "["
        if raw[start + 1 : start + 2] == b"]":
            at = start + 2
            continue
        same = known[len(spans)] if len(spans) < len(known) else None
        if same is not None and raw.startswith(same[0], start):
            span, parsed = same
        else:
            end = raw.find(b"}]", start)
            if end < 0:
                break
            span, parsed = raw[start : end + 2], None
        pieces += (raw[at:start], b"null")
        spans.append(span)
        lists.append(parsed)
        at = start + len(span)
    if not spans:
        return raw, [], []
    pieces.append(raw[at:])
    return b"".join(pieces), spans, lists


def parse_heartbeat(raw: bytes, known: Known) -> tuple[Any, Known]:
    """:func:`loads` of ``raw``, reusing each inline kernel list of ``known`` whose bytes
    come again (heartbeats of workers that still send their rows inline).

    Returns the document and its kernel arrays (``known`` for the next call).
    Equal to ``loads(raw)`` whatever ``raw`` holds: a cut that is not exactly
    the model entries' kernel arrays (each cut value must parse as a whole list,
    and fill a ``models.<id>.kernels`` left ``null``) falls back to parsing ``raw``
    whole. A known array needs no check: it parsed whole once, so the same bytes
    at the start of a value are that value. Raises what ``json.loads`` raises.
    """
    rest, spans, lists = _cut_kernels(raw, known)
    if not spans:
        return loads(raw), []
    try:
        doc = loads(rest)
        lists = [loads(s) if k is None else k for s, k in zip(spans, lists, strict=True)]
    except (ValueError, RecursionError):  # a cut inside a string: not kernel arrays after all
        return loads(raw), []
    models = doc.get("models") if isinstance(doc, dict) else None
    slots = [
        e
        for e in (models.values() if isinstance(models, dict) else ())
        if isinstance(e, dict) and "kernels" in e and e["kernels"] is None
    ]
    if len(slots) != len(spans) or not all(isinstance(k, list) for k in lists):
        return loads(raw), []
    for entry, kernels in zip(slots, lists, strict=True):
        entry["kernels"] = kernels
    return doc, list(zip(spans, lists, strict=True))


def kernel_stamp(doc: Any) -> tuple[str, dict[str, Any]] | None:
    """The heartbeat's kernel-table stamp and row counts, or None (rows inline, or none)."""
    index = doc.get("kernels") if isinstance(doc, dict) else None
    stamp = index.get("stamp") if isinstance(index, dict) else None
    if not isinstance(stamp, str):
        return None
    rows = index.get("rows") if isinstance(index, dict) else None
    return stamp, rows if isinstance(rows, dict) else {}


def parse_tables(raw: Any) -> Tables | None:
    """The rows of a kernel-table key (``{"models": {model_id: [rows]}}``); None if unusable."""
    try:
        doc = loads(raw) if isinstance(raw, bytes | str) else None
    except (ValueError, RecursionError):
        return None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        return None
    return {str(m): rows for m, rows in models.items() if isinstance(rows, list)}


def with_kernels(view: WorkerView, tables: Tables) -> WorkerView:
    """``view`` whose model entries hold their rows under ``kernels`` (the same lists),
    as heartbeats with inline rows have them. Models the tables do not name are left as
    they are; so are the heartbeat's own dicts (``raw``) and what was derived (``memo``)."""
    models = {m: {**e, "kernels": tables[m]} if m in tables else e for m, e in view.models.items()}
    return replace(view, models=models)


def _copy(view: WorkerView, **changes: Any) -> WorkerView:
    """``dataclasses.replace(view, **changes)`` without running ``__init__`` (each poll
    copies every unchanged view to bring its age up to date)."""
    new = object.__new__(WorkerView)
    new.__dict__.update(view.__dict__, **changes)
    return new


@dataclass
class _Entry:
    prefix: bytes
    view: WorkerView
    kernels: Known  # inline kernel arrays (older workers)
    stamped: bool  # the heartbeat holds a numeric updated_at
    stamp: str | None = None  # the kernel-table stamp the heartbeat names
    tables: Tables | None = None  # the rows for ``stamp``; None while not fetched


class HeartbeatCache:
    """Parsed heartbeats by worker name; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._wanted: dict[str, str] = {}

    def current(self, name: str, prefix: bytes, now: float) -> WorkerView | None:
        """The cached view of ``name`` if ``prefix`` (its first bytes now) shows the same heartbeat."""
        e = self._entries.get(name)
        if e is None or e.prefix != prefix:
            return None
        if len(prefix) >= PREFIX_BYTES and _STAMP not in prefix:
            return None  # a prefix without the stamp tells nothing
        if not e.stamped:  # parse_worker takes "now" for a heartbeat without a stamp
            return _copy(e.view, updated_at=now, age_s=0.0)
        return _copy(e.view, age_s=max(0.0, now - e.view.updated_at))

    def parse(self, name: str, raw: Any, now: float) -> WorkerView:
        """A view of ``raw`` (as ``parse_worker``), remembered for :meth:`current` when valid.

        A heartbeat naming kernel tables gets the rows held for its stamp; when none are
        held its name goes to :meth:`wanted` (and the view has no rows until
        :meth:`attach`)."""
        e = self._entries.pop(name, None)
        self._wanted.pop(name, None)
        kernels: Known = []
        doc: Any = raw
        if isinstance(raw, bytes):
            try:
                doc, kernels = parse_heartbeat(raw, e.kernels if e is not None else [])
            except (ValueError, RecursionError):
                doc = None
        view = parse_worker(name, doc, now)
        prepare_hists(view)  # checked once per heartbeat, not at every scrape
        if not isinstance(raw, bytes) or view.state == "invalid":
            return view
        stamp = view.raw.get("updated_at")
        stamped = isinstance(stamp, int | float) and not isinstance(stamp, bool)
        entry = _Entry(raw[:PREFIX_BYTES], view, kernels, stamped)
        index = kernel_stamp(view.raw)
        if index is not None:
            entry.stamp, counts = index
            if e is not None and e.stamp == entry.stamp and e.tables is not None:
                entry.tables = e.tables
            elif not any(isinstance(n, int) and n > 0 for n in counts.values()):
                entry.tables = {str(m): [] for m in counts}  # nothing profiled: nothing to fetch
            else:
                self._wanted[name] = entry.stamp
            if entry.tables is not None:
                entry.view = with_kernels(view, entry.tables)
        self._entries[name] = entry
        return entry.view

    def wanted(self) -> dict[str, str]:
        """Worker name -> stamp of the kernel tables to fetch (heartbeats parsed since the
        last call whose stamp has no rows here); cleared by the call."""
        wanted, self._wanted = self._wanted, {}
        return wanted

    def attach(self, name: str, stamp: str, raw: Any) -> WorkerView | None:
        """The view of ``name`` with the kernel tables fetched for ``stamp`` (``raw``: the value
        of its kernel key); None if the heartbeat moved on or ``raw`` holds no tables (the
        next heartbeat asks again)."""
        e = self._entries.get(name)
        tables = parse_tables(raw)
        if e is None or e.stamp != stamp or tables is None:
            return None
        e.tables = {m: rows for m, rows in tables.items() if m in e.view.models}
        e.view = with_kernels(e.view, e.tables)
        return e.view

    def keep(self, names: Iterable[str]) -> None:
        """Forget every worker not in ``names``."""
        wanted = set(names)
        for name in [n for n in self._entries if n not in wanted]:
            del self._entries[name]
