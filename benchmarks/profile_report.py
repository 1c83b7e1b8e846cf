"""The figures of ``framepool bench profile`` (where a worker's time goes) and its docs section.

py-spy's ``raw`` format is one line per distinct stack, ``frame;frame;...;leaf COUNT``,
the first frame the thread (``thread (0x7f..): MainThread`` with ``--threads``). Pure
functions of that text and of the report: unit-tested without a worker or py-spy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, report_head, update_bench_docs

DOCS = ROOT / "docs" / "benchmarks.md"
MARKS = (
    "<!-- bench-profile:latest:begin -->",
    "<!-- bench-profile:latest:end -->",
    "<!-- bench-profile:history:begin -->",
    "<!-- bench-profile:history:end -->",
)
ROOT_SHARE = 0.99  # of a thread's samples: a function under that many is its root
_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\):?\s*")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def thread_name(frame: str) -> str:
    """``thread (0x7f3a): ThreadPoolExecutor-0_3`` -> ``ThreadPoolExecutor-N_N``: one
    row per kind of thread, the numbers of a pool's threads folded together."""
    name = _THREAD.sub("", frame).strip() or "?"
    return re.sub(r"\d+", "N", name)


def function_name(frame: str) -> str:
    """``ModelRunner._run (workers/runner.py:254)`` -> ``ModelRunner._run (workers/runner.py)``:
    a function's lines counted together, its file named by its package part."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw lines -> (frames, samples); a malformed line is a ValueError."""
    stacks = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            raise ValueError(f"line {n} of py-spy's output is not 'stack count': {line[:120]!r}")
        stacks.append((stack.split(";"), int(count)))
    return stacks


def aggregate(text: str, frames: int, rate: float, top: int = 15) -> dict[str, Any]:
    """Shares of the samples per thread, per function where a sample was taken (*self*)
    and per function anywhere on the stack (*inclusive*, once per sample; without the
    functions under 99 % or more of their thread's samples), each also in µs per frame (samples / rate / frames: inflated by the profiler's own cost, so
    read them as shares of the worker's time, not as times)."""
    if frames < 1 or rate <= 0:
        raise ValueError("frames and rate must be positive")
    threads: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    per_thread: Counter[tuple[str, str]] = Counter()  # (thread, function) -> samples
    total = 0
    for stack, n in parse_raw(text):
        total += n
        head, calls = (stack[0], stack[1:]) if stack[0].startswith("thread (") else ("?", stack)
        thread = thread_name(head)
        threads[thread] += n
        if calls:
            self_[function_name(calls[-1])] += n
        for f in {function_name(c) for c in calls}:
            incl[f] += n
            per_thread[thread, f] += n
    # a function under (nearly) every sample of its thread (the thread's entry, click,
    # the event loop's start) says only how busy that thread was: left out of *inclusive*
    roots = {f for (t, f), n in per_thread.items() if n >= ROOT_SHARE * threads[t]}
    for f in roots:
        del incl[f]

    def rows(counter: Counter[str], k: int) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "samples": n,
                "share": round(n / total, 4) if total else 0.0,
                "us_per_frame": round(n / rate / frames * 1e6, 1),
            }
            for name, n in counter.most_common(k)
        ]

    return {
        "samples": total,
        "us_per_frame": round(total / rate / frames * 1e6, 1),
        "threads": rows(threads, len(threads)),
        "self": rows(self_, top),
        "inclusive": rows(incl, 2 * top),
    }


def _table(title: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [f"| {title} | share of samples | µs per frame |", "|---|---|---|"]
    out += [f"| `{r['name']}` | {100 * r['share']:.1f} % | {r['us_per_frame']:g} |" for r in rows]
    return out


def latest_block(report: Mapping[str, Any]) -> str:
    m, cfg, prof = report["machine"], report["config"], report["profile"]
    v = m["versions"]
    plain, spied = report["unprofiled"], report["profiled"]
    mode = (
        "GIL holders only (`--gil`)"
        if cfg["mode"] == "gil"
        else "every thread, idle too (`--idle`)"
    )
    return "\n".join(
        [
            *report_head(report),
            f"- versions: Python {v['python']}, torch {v['torch']}, Celery {v['celery']}, "
            f"kombu {v['kombu']}, redis-server {v['redis-server']}, py-spy {cfg['py_spy']}",
            f"- {cfg['model']} on {cfg['device']}, MAX_BATCH_SIZE={cfg['max_batch_size']}; "
            f"closed loop of {cfg['frames']} frames (32-64 outstanding), once without the "
            f"profiler and once with py-spy at {cfg['rate']:g} Hz, {mode}",
            f"- without the profiler: {plain['steady_fps']:.1f} frames/s, worker CPU "
            f"{plain['worker_cpu_ms_per_frame']:.2f} ms per frame; with it: "
            f"{spied['steady_fps']:.1f} frames/s, {spied['worker_cpu_ms_per_frame']:.2f} ms",
            f"- {prof['samples']} samples, {prof['us_per_frame']:g} µs per frame in all",
            "",
            *_table("thread", prof["threads"]),
            "",
            *_table("function where the sample was taken (self)", prof["self"]),
            "",
            *_table(
                "function anywhere on the stack (inclusive; a thread's roots left out)",
                prof["inclusive"],
            ),  # fmt: skip
        ]
    )


HISTORY_HEADER = (
    "| date | command | machine | frames/s without / with py-spy | worker CPU ms per frame "
    "| busiest thread | top self function | run time |\n|---|---|---|---|---|---|---|---|"
)


def history_row(report: Mapping[str, Any]) -> str:
    m, prof = report["machine"], report["profile"]
    plain, spied = report["unprofiled"], report["profiled"]
    none: dict[str, Any] = {"name": "-", "share": 0.0}
    busiest = prof["threads"][0] if prof["threads"] else none
    top = prof["self"][0] if prof["self"] else none
    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']} "
        f"| {plain['steady_fps']:.1f} / {spied['steady_fps']:.1f} "
        f"| {plain['worker_cpu_ms_per_frame']:.2f} "
        f"| {busiest['name']} {100 * busiest['share']:.0f} % "
        f"| `{top['name']}` {100 * top['share']:.1f} % | {report['runtime_s']:.0f} s |"
    )


def update_docs(report: Mapping[str, Any], path: Path = DOCS) -> None:
    from benchmarks import profile_worker

    title = "Where a worker's time goes (`framepool bench profile`)"
    update_bench_docs(path, MARKS, title, profile_worker.__doc__, "profile", latest_block(report),
                      HISTORY_HEADER, history_row(report))  # fmt: skip


def show(report: Mapping[str, Any]) -> None:
    print()
    print(latest_block(report).split("\n\n", 1)[1])
