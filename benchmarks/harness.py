"""Pieces the benchmarks share: statistics, the closed-loop driver, test frames, the
machine's description and CPU time, and the tables and docs sections they write.

The sandbox that starts Redis and worker subprocesses is :mod:`benchmarks.sandbox`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------- statistics
def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50.0)


def steady_rate(timestamps: Iterable[float], warmup_frac: float = 0.1) -> float:
    """Completions per second after dropping the first ``warmup_frac`` of them.

    ``timestamps`` are completion times (seconds); the rate is the number of
    completions after the first kept one divided by the time they took.
    """
    ts = sorted(timestamps)
    if not 0 <= warmup_frac < 1:
        raise ValueError(f"warmup_frac must be within [0, 1), got {warmup_frac}")
    first = math.ceil(len(ts) * warmup_frac)
    window = ts[first:]
    if len(window) < 2:
        raise ValueError(f"need at least 2 completions after warm-up, got {len(window)}")
    span = window[-1] - window[0]
    if span <= 0:
        raise ValueError("completions after warm-up all share one timestamp")
    return (len(window) - 1) / span


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def result_latencies(results: Sequence[Any]) -> dict[str, float]:
    """p50/p99 (ms) of a run's ``InferenceResult``s, from the worker's stamps:
    *e2e* is ``completed_at - enqueued_at``; *service* is e2e less the queue wait
    (the worker receiving the frame to its result: batch wait, decode, inference,
    ...); *added* is e2e less inference (what framepool adds to the model)."""
    e2e = [(r.completed_at - r.enqueued_at) * 1000.0 for r in results]
    service = [ms - r.timings_ms.queue for ms, r in zip(e2e, results, strict=True)]
    added = [ms - r.timings_ms.inference for ms, r in zip(e2e, results, strict=True)]
    out = {}
    for name, values in (("e2e", e2e), ("service", service), ("added", added)):
        out[f"{name}_p50_ms"] = round(percentile(values, 50), 3)
        out[f"{name}_p99_ms"] = round(percentile(values, 99), 3)
    return out


# ------------------------------------------------------------------ load driver
def closed_loop(
    n: int,
    submit: Callable[[int, int], list[Any]],
    read: Callable[[Any], Any],
    chunk: int = 32,
) -> tuple[list[Any], float]:
    """Keep between ``chunk`` and ``2 * chunk`` frames outstanding until ``n`` are read back.

    ``submit(start, count)`` enqueues frames ``start..start+count-1`` and returns
    their handles; ``read(handle)`` waits for one result. Returns the results in
    submission order and the wall time from the first submit to the last read.
    """
    pending: deque[Any] = deque()
    results: list[Any] = []
    t0 = time.perf_counter()
    first = min(2 * chunk, n)
    pending.extend(submit(0, first))
    sent = first
    while pending:
        results.append(read(pending.popleft()))
        if len(pending) < chunk and sent < n:
            count = min(chunk, n - sent)
            pending.extend(submit(sent, count))
            sent += count
    return results, time.perf_counter() - t0


# ----------------------------------------------------------------------- frames
def test_frames(
    count: int = 16, width: int = 640, height: int = 480, quality: int = 90
) -> list[bytes]:
    """``count`` distinct JPEG frames of the synthetic camera (what a camera would send)."""
    from framepool.codec import encode_jpeg
    from producer.sources.synthetic import SyntheticCamera

    cam = SyntheticCamera("bench", width=width, height=height, fps=10.0, seed=0)
    return [encode_jpeg(cam.frame(seq).image, quality=quality) for seq in range(count)]


test_frames.__test__ = False  # type: ignore[attr-defined]  # a helper: pytest collects it where imported


# ---------------------------------------------------------------------- machine
def utc_minute() -> str:
    """A report's date: now, to the minute, in UTC."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def report_head(report: Mapping[str, Any]) -> list[str]:
    """The first lines of a benchmark's latest-run block in docs/benchmarks.md: when,
    with which command, on what machine (each report adds its own details)."""
    m = report["machine"]
    return [
        f"Run {report['date']} — `{report['command']}` — {report['runtime_s']:.0f} s in all.",
        "",
        f"- machine: {m['nproc']} CPUs, {m['cpu']} ({m['platform']})",
    ]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("torch", "celery", "kombu", "redis", "simplejpeg", "numpy"):
        try:
            versions[mod] = str(__import__(mod).__version__)
        except Exception:  # pragma: no cover - reported, never fatal
            versions[mod] = "?"
    try:
        from framepool.redis_server import find_redis_server

        out = subprocess.run(
            [find_redis_server(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        m = re.search(r"v=(\S+)", out)
        versions["redis-server"] = m.group(1) if m else "?"
    except Exception:
        versions["redis-server"] = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "versions": versions,
    }


# ---------------------------------------------------------------------- CPU time
def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` (10 ms ticks)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------- the docs
def update_doc_section(
    path: Path,
    marks: tuple[str, str, str, str],
    intro: str,
    latest: str | None,
    history_header: str,
    history_row: str,
) -> None:
    """Rewrite one benchmark's *latest* block and append a row to its *history* table.

    ``marks`` are the four HTML comments (latest begin/end, history begin/end).
    The first time, ``intro`` (which must hold all four) is appended to the file;
    nothing outside the markers is touched afterwards. ``latest`` None leaves the
    latest block as it is (a run that has a block of its own elsewhere).
    """
    begin, end, hist_begin, hist_end = marks
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if not all(m in text for m in marks):
        text = text.rstrip("\n") + "\n" + intro
    if latest is not None:
        text = re.sub(
            re.escape(begin) + r".*?" + re.escape(end),
            lambda _: f"{begin}\n{latest}\n{end}",
            text,
            flags=re.DOTALL,
        )
    head, rest = text.split(hist_begin, 1)
    table, tail = rest.split(hist_end, 1)
    lines = [ln for ln in table.strip("\n").splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("| date"):
        lines = history_header.splitlines() + lines
    lines.append(history_row)
    text = f"{head}{hist_begin}\n" + "\n".join(lines) + f"\n{hist_end}{tail}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def update_bench_docs(
    path: Path,
    marks: tuple[str, str, str, str],
    title: str,
    module_doc: str | None,
    tag: str,
    latest: str,
    history_header: str,
    history_row: str,
) -> None:
    """:func:`update_doc_section` for a bench whose section starts, the first time,
    with ``## title``, its module docstring less the first paragraph (reST literals
    as Markdown), then ``### Latest run (tag)`` and ``### History (tag)``."""
    intro = (
        f"\n## {title}\n\n"
        + (module_doc or "").split("\n\n", 1)[-1].strip().replace("``", "`")
        + f"\n\n### Latest run ({tag})\n\n{marks[0]}\n{marks[1]}\n\n### History ({tag})\n\n"
        f"{marks[2]}\n{history_header}\n{marks[3]}\n"
    )
    update_doc_section(path, marks, intro, latest, history_header, history_row)


def print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    table = [list(header), *map(list, rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    for j, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def save_report(
    report: dict[str, Any],
    out: Path,
    docs: Path,
    update_docs: Callable[[dict[str, Any]], None],
    show: Callable[[dict[str, Any]], None],
    *,
    write_docs: bool = True,
) -> int:
    """Write the JSON, print the summary, rewrite the docs section (unless not
    ``write_docs``: a trial run); the exit code."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    show(report)
    if not write_docs:
        print(f"\nrun time {report['runtime_s']:.0f} s; JSON in {out} (docs untouched: --no-docs)")
        return 0
    print(f"\nrun time {report['runtime_s']:.0f} s; JSON in {out}")
    try:
        update_docs(report)
        print(f"updated {docs.relative_to(ROOT)}")
    except OSError as exc:
        print(f"could not update {docs}: {exc}", file=sys.stderr)
    return 0
