"""The figures of ``framepool bench ab`` (B/A within each pair) and its docs section.

Pure functions of the report: unit-tested without a worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, median, report_head, update_bench_docs

DOCS = ROOT / "docs" / "benchmarks.md"
MARKS = (
    "<!-- bench-ab:latest:begin -->",
    "<!-- bench-ab:latest:end -->",
    "<!-- bench-ab:history:begin -->",
    "<!-- bench-ab:history:end -->",
)


@dataclass(frozen=True)
class Metric:
    label: str
    path: tuple[str, ...]  # into one side's run: ("open", "e2e_p99_ms")
    unit: str
    higher_is_better: bool = False

    def value(self, run: Mapping[str, Any]) -> float:
        v: Any = run
        for key in self.path:
            v = v[key]
        return float(v)


METRICS = (
    Metric("closed-loop throughput", ("closed", "steady_fps"), "frames/s", True),
    Metric("open-loop p50", ("open", "e2e_p50_ms"), "ms"),
    Metric("open-loop p99", ("open", "e2e_p99_ms"), "ms"),
    Metric("model idle p50", ("open", "model_idle_p50_ms"), "ms"),
    Metric("model idle p99", ("open", "model_idle_p99_ms"), "ms"),
    Metric("forward pass p50 (open loop)", ("open", "inference_p50_ms"), "ms"),
    Metric("mean batch (open loop)", ("open", "mean_batch_size"), "frames"),
    Metric("worker + Redis CPU per frame, closed", ("closed", "cpu_ms_per_frame", "server"), "ms"),
    Metric("worker + Redis CPU per frame, open", ("open", "cpu_ms_per_frame", "server"), "ms"),
)
NEUTRAL = {"mean batch (open loop)"}  # reported, neither side "ahead"


def build_figures(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: each side's median, the B/A ratio of each pair, their median and
    range, and in how many pairs B was ahead (ties count for neither)."""
    if not pairs:
        raise ValueError("no pairs to report")
    out = []
    for m in METRICS:
        a = [m.value(p["a"]) for p in pairs]
        b = [m.value(p["b"]) for p in pairs]
        ratios = [y / x if x else float("nan") for x, y in zip(a, b, strict=True)]
        ahead = None
        if m.label not in NEUTRAL:
            ahead = sum(
                (y > x) if m.higher_is_better else (y < x) for x, y in zip(a, b, strict=True)
            )
        out.append(
            {
                "metric": m.label,
                "unit": m.unit,
                "higher_is_better": m.higher_is_better,
                "a_median": round(median(a), 3),
                "b_median": round(median(b), 3),
                "ratio_median": round(median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "b_ahead": ahead,
                "pairs": len(pairs),
            }
        )
    return out


def table(figs: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| figure | A (median) | B (median) | B/A, median of pairs | range | B ahead |",
        "|---|---|---|---|---|---|",
    ]
    for f in figs:
        better = "higher is better" if f["higher_is_better"] else "lower is better"
        ahead = "-" if f["b_ahead"] is None else f"{f['b_ahead']} of {f['pairs']}"
        lines.append(
            f"| {f['metric']} ({f['unit']}{', ' + better if f['b_ahead'] is not None else ''}) "
            f"| {f['a_median']:g} | {f['b_median']:g} | {f['ratio_median']:.3f}x "
            f"| {f['ratio_min']:.3f}-{f['ratio_max']:.3f} | {ahead} |"
        )
    return "\n".join(lines)


def latest_block(report: Mapping[str, Any]) -> str:
    m, cfg, sides = report["machine"], report["config"], report["sides"]
    v = m["versions"]
    calib = cfg.get("calibration_fps")
    rate = f"{cfg['open_fps']:g} frames/s" + (
        f" ({cfg['load']:g} of the tight loop's {calib:g})" if calib else ""
    )
    return "\n".join(
        [
            *report_head(report),
            f"- versions: Python {v['python']}, torch {v['torch']}, Celery {v['celery']}, "
            f"redis-server {v['redis-server']}",
            f"- {cfg['model']} on {cfg['device']}, torch threads {cfg['torch_threads']}, "
            f"MAX_BATCH_SIZE={cfg['max_batch_size']}; open loop {cfg['latency_frames']} frames "
            f"from {cfg['cameras']} cameras at {rate}; closed loop {cfg['frames']} frames; "
            f"{cfg['pairs']} pairs",
            f"- **A**: {sides['a']}",
            f"- **B**: {sides['b']}",
            "",
            table(report["figures"]),
        ]
    )


HISTORY_HEADER = (
    "| date | command | machine | B/A: throughput | B/A: open p50 / p99 | B ahead at p99 | run time |\n"
    "|---|---|---|---|---|---|---|"
)


def history_row(report: Mapping[str, Any]) -> str:
    figs = {f["metric"]: f for f in report["figures"]}
    m = report["machine"]
    thr, p50, p99 = figs["closed-loop throughput"], figs["open-loop p50"], figs["open-loop p99"]
    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']} "
        f"| {thr['ratio_median']:.3f}x | {p50['ratio_median']:.3f}x / {p99['ratio_median']:.3f}x "
        f"| {p99['b_ahead']} of {p99['pairs']} | {report['runtime_s']:.0f} s |"
    )


def update_docs(report: Mapping[str, Any], path: Path = DOCS) -> None:
    from benchmarks import ab

    title = "A change to the worker, in pairs (`framepool bench ab`)"
    update_bench_docs(path, MARKS, title, ab.__doc__, "ab", latest_block(report),
                      HISTORY_HEADER, history_row(report))  # fmt: skip


def show(report: Mapping[str, Any]) -> None:
    print()
    for s, what in report["sides"].items():
        print(f"{s.upper()}: {what}")
    print(table(report["figures"]))
