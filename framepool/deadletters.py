"""Dead letters: work framepool gave up on, kept in one capped Redis list.

``framepool:dead-letters`` holds JSON entries, newest first, capped at
DEAD_LETTER_MAXLEN. Every entry has the same top-level fields whatever its
kind, so one reader (``framepool dead-letters``, the monitor) lists them all::

    {"id", "kind": "callback" | "frame", "reason", "job_id", "correlation_id",
     "model_id", "camera_id", "url", "attempts", "at", "payload"}

``url`` is masked (credentials, query values and token-like path segments
hidden) and is the only place a reader sees it; ``payload`` is what a requeue
needs (a callback's real URL and its result) and is never printed. Each entry
also counts in the model's dropped hash (``framepool:dropped:<model_id>``)
under ``<kind>_dead_lettered``.

This module is core: it imports no other framepool package. It also owns the
shape of the ``framepool.deliver_callback`` message (:func:`send_callbacks`),
which the worker's dispatcher and the requeue both publish.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from celery import Celery

from framepool import correlation, keys

KINDS = ("callback", "frame")
MASK = "***"

#: Entries read per LRANGE when a filter means more than ``limit`` must be scanned.
_SCAN_CHUNK = 500

# A path segment this long that mixes letters and digits is a capability token
# (Slack's and Discord's webhook URLs carry their secret in the path).
_TOKEN_SEGMENT = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_\-.~]{16,}$")


def mask_url(url: str) -> str:
    """``url`` fit for logs and listings: no credentials, query values or path tokens."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    path = "/".join(MASK if _TOKEN_SEGMENT.match(s) else s for s in parts.path.split("/"))
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def is_http_url(url: object) -> bool:
    """Whether ``url`` is an absolute http:// or https:// URL with a host."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def make_entry(
    kind: str,
    reason: str,
    *,
    job_id: str | None,
    correlation_id: str | None,
    model_id: str | None,
    camera_id: str | None,
    attempts: int,
    url: str | None = None,
    payload: Mapping[str, Any] | None = None,
    at: float | None = None,
) -> dict[str, Any]:
    """A dead-letter entry; ``url`` is masked here, ``payload`` kept for a requeue."""
    if kind not in KINDS:
        raise ValueError(f"unknown dead-letter kind {kind!r}; known: {', '.join(KINDS)}")
    return {
        "id": uuid.uuid4().hex,
        "kind": kind,
        "reason": reason,
        "job_id": job_id,
        "correlation_id": correlation_id,
        "model_id": model_id,
        "camera_id": camera_id,
        "url": mask_url(url) if url else None,
        "attempts": attempts,
        "at": time.time() if at is None else at,
        "payload": dict(payload or {}),
    }


def add(pipe: Any, entry: Mapping[str, Any], maxlen: int) -> None:
    """Queue the commands that record ``entry`` on a Redis pipeline (the caller executes)."""
    pipe.lpush(keys.DEAD_LETTERS, json.dumps(entry, separators=(",", ":")))
    pipe.ltrim(keys.DEAD_LETTERS, 0, maxlen - 1)
    if entry.get("model_id"):
        pipe.hincrby(keys.dropped_counter(entry["model_id"]), f"{entry['kind']}_dead_lettered", 1)


def public(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a listing shows: the entry without its payload."""
    return {k: v for k, v in entry.items() if k != "payload"}


@dataclass(slots=True)
class DeadLetter:
    raw: bytes  # the list element as stored: what LREM removes
    entry: dict[str, Any]


def read(client: Any, *, kind: str | None = None, limit: int = 50) -> list[DeadLetter]:
    """Up to ``limit`` dead letters (of ``kind``), newest first; unreadable ones skipped."""
    found: list[DeadLetter] = []
    start = 0
    chunk = limit if kind is None else max(limit, _SCAN_CHUNK)
    while len(found) < limit:
        raws = client.lrange(keys.DEAD_LETTERS, start, start + chunk - 1)
        for raw in raws:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict) or (kind is not None and entry.get("kind") != kind):
                continue
            found.append(DeadLetter(raw, entry))
            if len(found) == limit:
                break
        if len(raws) < chunk:
            break
        start += chunk
    return found


def total(client: Any) -> int:
    return int(client.llen(keys.DEAD_LETTERS))


# ------------------------------------------------------------------ callbacks
@dataclass(slots=True)
class Delivery:
    """One webhook to deliver: where, and the result to POST there."""

    url: str
    result: Mapping[str, Any]


def callback_repr(url: str, result: Mapping[str, Any]) -> str:
    """The task's ``argsrepr`` (what Flower and Celery's logs show): masked, compact."""
    return f"callback job={result.get('job_id')} url={mask_url(url)}"


def send_callbacks(app: Celery, deliveries: Iterable[Delivery]) -> int:
    """Publish one ``framepool.deliver_callback`` task per delivery, pipelined. Returns the count.

    The task's arguments are ``(url, result)``; the result's correlation id
    travels in the message header as for frames.
    """
    items = list(deliveries)
    if not items:
        return 0
    with app.producer_or_acquire() as producer:
        batch = producer.batch() if len(items) > 1 else nullcontext()
        with batch:
            for d in items:
                cid = d.result.get("correlation_id")
                app.send_task(
                    keys.CALLBACK_TASK,
                    args=(d.url, dict(d.result)),
                    queue=keys.CALLBACK_QUEUE,
                    headers={correlation.HEADER: cid} if cid else None,
                    correlation_id=cid,
                    argsrepr=callback_repr(d.url, d.result),
                    kwargsrepr="{}",
                    producer=producer,
                )
    return len(items)


def _callback_delivery(entry: Mapping[str, Any]) -> Delivery | None:
    payload = entry.get("payload")
    if not isinstance(payload, dict):
        return None
    url, result = payload.get("url"), payload.get("result")
    if not isinstance(url, str) or not is_http_url(url) or not isinstance(result, dict):
        return None
    return Delivery(url, result)


# ---------------------------------------------------------------------- frames
@dataclass(slots=True)
class FrameAgain:
    """A dead-lettered frame to enqueue again: its bytes and meta, a new job id."""

    frame: bytes
    meta: dict[str, Any]
    correlation_id: str | None


def _frame_again(entry: Mapping[str, Any]) -> FrameAgain | None:
    payload = entry.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
        return None
    try:
        frame = base64.b64decode(payload.get("frame_base64") or "", validate=True)
    except ValueError:
        return None
    if not frame:
        return None
    meta = dict(payload["meta"])
    # a fresh frame: enqueued now, no deadline or latest-wins left over from the first time
    meta.update(enqueued_at=time.time(), deadline_at=None, latest_wins=False)
    return FrameAgain(frame, meta, entry.get("correlation_id"))


def send_frames(app: Celery, frames: Iterable[FrameAgain]) -> int:
    """Publish each frame as a new ``framepool.infer`` job (new job id, same correlation id)."""
    items = list(frames)
    with app.producer_or_acquire() as producer:
        for f in items:
            cid = f.correlation_id
            app.send_task(
                keys.INFER_TASK,
                args=(f.frame, f.meta),
                task_id=uuid.uuid4().hex,
                queue=keys.queue_name(str(f.meta.get("model_id"))),
                headers={correlation.HEADER: cid} if cid else None,
                correlation_id=cid,
                argsrepr=f"frame<requeued {len(f.frame) // 1024}KB> model={f.meta.get('model_id')} "
                f"cam={f.meta.get('camera_id')} seq={f.meta.get('seq')} cid={cid}",
                kwargsrepr="{}",
                producer=producer,
            )
    return len(items)


#: Kinds a requeue knows how to send again: how to rebuild one, how to publish them.
_REQUEUERS: dict[
    str, tuple[Callable[[Mapping[str, Any]], Any], Callable[[Celery, list[Any]], int]]
] = {
    "callback": (_callback_delivery, send_callbacks),
    "frame": (_frame_again, send_frames),
}


@dataclass
class RequeueReport:
    requeued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # kind -> entries left in place


def requeue(client: Any, app: Celery, *, kind: str | None = None, limit: int = 50) -> RequeueReport:
    """Send up to ``limit`` dead letters (of ``kind``) again, then remove them from the list.

    Callbacks are delivered again; frames are enqueued again as new jobs (same
    correlation id). Entries without a usable payload stay and are counted in
    ``skipped``. An
    entry is removed only after its task was published, so a crash in between
    means one more delivery, never a lost one.
    """
    report = RequeueReport()
    sendable: list[tuple[DeadLetter, str, Any]] = []
    for letter in read(client, kind=kind, limit=limit):
        k = str(letter.entry.get("kind"))
        again = _REQUEUERS[k][0](letter.entry) if k in _REQUEUERS else None
        if again is None:
            report.skipped[k] += 1
            continue
        sendable.append((letter, k, again))
    if not sendable:
        return report
    for k, (_, send) in _REQUEUERS.items():
        items = [again for _, kind_, again in sendable if kind_ == k]
        if items:
            send(app, items)
    with client.pipeline(transaction=False) as pipe:
        for letter, _, _ in sendable:
            pipe.lrem(keys.DEAD_LETTERS, 1, letter.raw)
        pipe.execute()
    report.requeued = len(sendable)
    return report


# -------------------------------------------------------------------- display
def describe(summary: Mapping[str, Any]) -> str:
    """One line for a requeue's ``{"requeued": n, "skipped": {kind: n}}``."""
    line = f"requeued {summary['requeued']} dead letter(s)"
    skipped = summary.get("skipped") or {}
    if skipped:
        left = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        line += f"; left in place (no requeue for them): {left}"
    return line


def render_table(entries: list[dict[str, Any]], stored: int) -> Any:
    """A rich Table of (public) entries; ``stored`` is the list's full length."""
    from rich.table import Table

    table = Table(title=f"dead letters: {len(entries)} shown, {stored} stored (newest first)")
    for col in ("at (UTC)", "kind", "model", "camera", "job", "attempts", "reason", "url"):
        table.add_column(col, overflow="fold")
    for e in entries:
        at = e.get("at")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
            if isinstance(at, int | float)
            else "-"
        )
        table.add_row(
            when,
            str(e.get("kind") or "-"),
            str(e.get("model_id") or "-"),
            str(e.get("camera_id") or "-"),
            str(e.get("job_id") or "-"),
            str(e.get("attempts", "-")),
            str(e.get("reason") or "-"),
            str(e.get("url") or "-"),
        )
    return table
