"""Each heartbeat parsed once per write: the reader's cache of worker views.

Workers rewrite their heartbeat every ``HEARTBEAT_INTERVAL_SECONDS`` (5 s) while
the monitor reads every second, and most of a heartbeat's bytes are kernel rows
(``models.<id>.kernels``, up to 100 per model) that change only when the worker
profiles. So :class:`ClusterReader` works in two steps:

1. it fetches the first :data:`PREFIX_BYTES` of every heartbeat (``GETRANGE``).
   A worker writes ``updated_at`` there (before ``nvml`` and ``models``, see
   ``workers/snapshot.py``) and every write stamps a new one, so a prefix equal to
   the cached one that holds ``"updated_at"``, or that is the whole value, means
   the same heartbeat: :meth:`HeartbeatCache.current` returns the cached view with
   its age brought up to date;
2. it fetches the other heartbeats whole, and :meth:`HeartbeatCache.parse` parses
   them with :func:`parse_heartbeat`, which cuts the kernel arrays out before
   ``json.loads`` and reuses the lists parsed from the same bytes last time (the
   list objects themselves, so the merged kernel table can be reused too).

Views are shared between snapshots and must not be mutated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from monitoring.cluster_build import parse_worker, prepare_hists
from monitoring.cluster_views import WorkerView

#: Bytes of a heartbeat fetched to tell whether it changed.
PREFIX_BYTES = 2048
_STAMP = b'"updated_at"'
_KERNELS = b'"kernels":['


#: A kernel array seen before: its bytes and the list they parse to.
Known = list[tuple[bytes, Any]]


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
    """``json.loads(raw)``, reusing each kernel list of ``known`` whose bytes come again.

    Returns the document and its kernel arrays (``known`` for the next call).
    Equal to ``json.loads(raw)`` whatever ``raw`` holds: a cut that is not exactly
    the model entries' kernel arrays (each cut value must parse as a whole list,
    and fill a ``models.<id>.kernels`` left ``null``) falls back to parsing ``raw``
    whole. A known array needs no check: it parsed whole once, so the same bytes
    at the start of a value are that value. Raises what ``json.loads`` raises.
    """
    rest, spans, lists = _cut_kernels(raw, known)
    if not spans:
        return json.loads(raw), []
    try:
        doc = json.loads(rest)
        lists = [json.loads(s) if k is None else k for s, k in zip(spans, lists, strict=True)]
    except (ValueError, RecursionError):  # a cut inside a string: not kernel arrays after all
        return json.loads(raw), []
    models = doc.get("models") if isinstance(doc, dict) else None
    slots = [
        e
        for e in (models.values() if isinstance(models, dict) else ())
        if isinstance(e, dict) and "kernels" in e and e["kernels"] is None
    ]
    if len(slots) != len(spans) or not all(isinstance(k, list) for k in lists):
        return json.loads(raw), []
    for entry, kernels in zip(slots, lists, strict=True):
        entry["kernels"] = kernels
    return doc, list(zip(spans, lists, strict=True))


@dataclass
class _Entry:
    prefix: bytes
    view: WorkerView
    kernels: Known
    stamped: bool  # the heartbeat holds a numeric updated_at


class HeartbeatCache:
    """Parsed heartbeats by worker name; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def current(self, name: str, prefix: bytes, now: float) -> WorkerView | None:
        """The cached view of ``name`` if ``prefix`` (its first bytes now) shows the same heartbeat."""
        e = self._entries.get(name)
        if e is None or e.prefix != prefix:
            return None
        if len(prefix) >= PREFIX_BYTES and _STAMP not in prefix:
            return None  # a prefix without the stamp tells nothing
        if not e.stamped:  # parse_worker takes "now" for a heartbeat without a stamp
            return replace(e.view, updated_at=now, age_s=0.0)
        return replace(e.view, age_s=max(0.0, now - e.view.updated_at))

    def parse(self, name: str, raw: Any, now: float) -> WorkerView:
        """A view of ``raw`` (as ``parse_worker``), remembered for :meth:`current` when valid."""
        e = self._entries.get(name)
        kernels: Known = []
        doc: Any = raw
        if isinstance(raw, bytes):
            try:
                doc, kernels = parse_heartbeat(raw, e.kernels if e is not None else [])
            except (ValueError, RecursionError):
                doc = None
        view = parse_worker(name, doc, now)
        prepare_hists(view)  # validated once per heartbeat, not at every scrape
        if isinstance(raw, bytes) and view.state != "invalid":
            stamp = view.raw.get("updated_at")
            stamped = isinstance(stamp, int | float) and not isinstance(stamp, bool)
            self._entries[name] = _Entry(raw[:PREFIX_BYTES], view, kernels, stamped)
        else:
            self._entries.pop(name, None)
        return view

    def keep(self, names: Iterable[str]) -> None:
        """Forget every worker not in ``names``."""
        wanted = set(names)
        for name in [n for n in self._entries if n not in wanted]:
            del self._entries[name]
