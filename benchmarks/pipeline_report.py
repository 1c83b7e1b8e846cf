"""``framepool bench pipeline``'s figures and their place in docs/benchmarks.md.

The measuring is in :mod:`benchmarks.pipeline`; this turns its runs into the
figures (medians, ratios against the same run's baselines, goals), the terminal
table, the *Latest run* block and a *History* row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, median, ratio, report_head, update_doc_section

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-pipeline:latest:begin -->", "<!-- bench-pipeline:latest:end -->"
HIST_BEGIN, HIST_END = (
    "<!-- bench-pipeline:history:begin -->",
    "<!-- bench-pipeline:history:end -->",
)
BATCH = 8  # MAX_BATCH_SIZE of the worker, and the tight loop's batch
CONCURRENCY = 2 * BATCH  # the worker's default thread count (2 * MAX_BATCH_SIZE)
CHUNK = 32  # closed loop: submit this many whenever fewer are outstanding
GOALS = {
    "a": ("ratio", ">=", 0.9),
    "b_solo": ("ratio", ">=", 1.5),
    "b_two": ("ratio", ">=", 2.0),
    "c_p50": ("value", "<=", 5.0),
    "c_p99": ("value", "<=", 15.0),
}


def _fig(
    name: str,
    unit: str,
    values: list[float],
    base_values: list[float] | None,
    goal: tuple[str, str, float] | None,
    **extra: Any,
) -> dict[str, Any]:
    med = median(values)
    fig: dict[str, Any] = {"name": name, "unit": unit, "runs": [round(v, 3) for v in values]}
    fig["median"] = round(med, 3)
    if base_values is not None:
        bmed = median(base_values)
        fig["baseline_runs"] = [round(v, 3) for v in base_values]
        fig["baseline_median"] = round(bmed, 3)
        fig["ratio"] = round(ratio(med, bmed), 3)
        fig["ratio_runs"] = [
            round(ratio(v, b), 3) for v, b in zip(values, base_values, strict=True)
        ]
    if goal is not None:
        kind, op, target = goal
        subject = fig["ratio"] if kind == "ratio" else med
        fig["goal"] = f"{'ratio' if kind == 'ratio' else unit} {op} {target:g}"
        fig["met"] = bool(subject >= target if op == ">=" else subject <= target)
    fig.update(extra)
    return fig


def build_figures(res: dict[str, Any], noop: dict[str, Any]) -> dict[str, dict[str, Any]]:
    e2e, loop, lat, lm = res["e2e"], res["loop"], res["latency"], res["model"]
    plat = noop["plain_latency"]
    figs = {
        "a": _fig(
            "(a) resnet18 end to end vs in-process loop",
            "frames/s",
            [r.steady_fps for r in e2e],
            [r.steady_fps for r in loop],
            GOALS["a"],
            baseline="decode+preprocess+forward+postprocess loop, one process",
        ),
        "b_solo": _fig(
            "(b) noop per worker process vs plain Celery -P solo",
            "frames/s",
            [r.steady_fps for r in noop["framepool"]],
            [r.steady_fps for r in noop["plain_solo"]],
            GOALS["b_solo"],
            baseline="plain Celery task, full-size decode, -P solo",
        ),
        "b_two": _fig(
            "(b2) noop with 2 worker processes vs plain Celery -P solo (one process)",
            "frames/s",
            [r.steady_fps for r in noop["framepool_2"]],
            [r.steady_fps for r in noop["plain_solo"]],
            GOALS["b_two"],
            baseline="plain Celery task, full-size decode, -P solo",
        ),
        "b_threads": _fig(
            f"(b') noop per worker process vs plain Celery -P threads -c {CONCURRENCY}",
            "frames/s",
            [r.steady_fps for r in noop["framepool"]],
            [r.steady_fps for r in noop["plain_threads"]],
            None,
            baseline=f"plain Celery task, full-size decode, -P threads -c {CONCURRENCY}",
        ),
        "c_p50": _fig(
            f"(c) {lm} added latency p50 (completed-enqueued minus inference), 10 fps",
            "ms",
            [x["added_p50_ms"] for x in lat],
            [x["added_p50_ms"] for x in plat],
            GOALS["c_p50"],
            baseline="plain Celery -P solo task (full decode): completed-enqueued",
        ),
        "c_p99": _fig(
            f"(c) {lm} added latency p99, 10 fps",
            "ms",
            [x["added_p99_ms"] for x in lat],
            [x["added_p99_ms"] for x in plat],
            GOALS["c_p99"],
        ),
        "c_e2e_p50": _fig(
            f"(c) {lm} producer round trip p50 (submit to result read), 10 fps",
            "ms",
            [x["e2e_p50_ms"] for x in lat],
            [x["e2e_p50_ms"] for x in plat],
            None,
        ),
        "c_e2e_p99": _fig(
            f"(c) {lm} producer round trip p99, 10 fps",
            "ms",
            [x["e2e_p99_ms"] for x in lat],
            [x["e2e_p99_ms"] for x in plat],
            None,
        ),
        "c_inference_p50": _fig(
            f"(c) {lm} inference p50, 10 fps",
            "ms",
            [x["inference_p50_ms"] for x in lat],
            None,
            None,
        ),
    }
    return figs


def _fmt(v: float, unit: str) -> str:
    return f"{v:.1f}" if unit == "frames/s" else f"{v:.2f}"


def summary_rows(figs: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for f in figs.values():
        unit = f["unit"]
        base = _fmt(f["baseline_median"], unit) if "baseline_median" in f else "-"
        rat = f"{f['ratio']:.3f}x" if "ratio" in f else "-"
        goal = f.get("goal", "-")
        met = "-" if "met" not in f else ("yes" if f["met"] else "**no**")
        runs = ", ".join(_fmt(v, unit) for v in f["runs"])
        rows.append([f["name"], f"{_fmt(f['median'], unit)} {unit}", base, rat, goal, met, runs])
    return rows


HEADER = ["figure", "framepool (median)", "baseline (median)", "ratio", "goal", "met", "repeats"]


def print_table(figs: dict[str, dict[str, Any]]) -> None:
    rows = [HEADER, *summary_rows(figs)]
    widths = [max(len(r[i].replace("**", "")) for r in rows) for i in range(len(HEADER))]
    for j, row in enumerate(rows):
        print("  ".join(c.replace("**", "").ljust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def latest_block(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    cfg = report["config"]
    figs = report["figures"]
    res = report["details"]
    cpu_lines = []
    for key, label in (
        ("a_e2e", "(a) resnet18 end to end"),
        ("b_framepool", "(b) framepool noop"),
        ("b_framepool_2", "(b2) framepool noop, 2 worker processes (worker: both)"),
        ("b_plain_solo", "(b) plain Celery -P solo"),
        ("b_plain_threads", "(b) plain Celery -P threads"),
        ("c_latency", f"(c) {report['config']['latency_model']} at 10 fps"),
    ):
        runs = res.get(key)
        if not runs:  # a run from before this figure existed
            continue
        per = {
            k: median(r["cpu_ms_per_frame"][k] for r in runs) for k in runs[0]["cpu_ms_per_frame"]
        }
        if "worker2" in per:
            per["worker"] += per.pop("worker2")
        cells = [f"{per.get(k, float('nan')):.2f}" for k in ("worker", "redis", "producer")]
        cpu_lines.append(f"| {label} | " + " | ".join(cells) + f" | {per['others_cpus']:.2f} |")
    loop = res["a_loop"]
    loop_cpu = median(r["cpu_ms_per_frame"]["loop"] for r in loop)
    loop_others = median(r["cpu_ms_per_frame"]["others_cpus"] for r in loop)
    lat = res["c_latency"]
    parts = {k: median(x["median_parts_ms"][k] for x in lat) for k in lat[0]["median_parts_ms"]}
    e2e_t = {
        k: median(r["median_timings_ms"][k] for r in res["a_e2e"])
        for k in res["a_e2e"][0]["median_timings_ms"]
    }
    batch = median(r["mean_batch_size"] for r in res["a_e2e"])
    return "\n".join(
        [
            *report_head(report),
            f"- versions: Python {v['python']}, torch {v['torch']}, Celery {v['celery']}, "
            f"kombu {v['kombu']}, redis-py {v['redis']}, redis-server {v['redis-server']}, "
            f"simplejpeg {v['simplejpeg']}",
            f"- settings: MAX_BATCH_SIZE={cfg['max_batch_size']}, BATCH_TIMEOUT_MS (default) "
            f"{cfg['batch_timeout_ms']:g}, worker threads {cfg['concurrency']}, torch threads "
            f"{cfg['torch_threads']}, {cfg['frames']} frames per (a) end-to-end run "
            f"({cfg['loop_frames']} for the loop), {cfg['noop_frames']} per (b) run, "
            f"{cfg['latency_frames']} frames of {cfg['latency_model']} at "
            f"{cfg['latency_fps']:g} fps (open loop) for (c) and "
            f"{cfg['plain_latency_frames']} for its plain Celery reference, "
            f"{cfg['repeats']} repeats, 640x480 JPEG q{cfg['jpeg_quality']} "
            f"(~{cfg['jpeg_kb']} KB), closed loop keeps {CHUNK}-{2 * CHUNK} frames outstanding",
            "",
            _md_table(summary_rows(figs)),
            "",
            "CPU per frame (ms, median of repeats, whole run incl. ramp-up; "
            "worker = the one worker process, producer = the benchmark process "
            "submitting and reading results; last column: CPUs' worth of work done "
            "meanwhile by processes outside the benchmark, i.e. noise):",
            "",
            "| run | worker | redis-server | producer | other processes (CPUs busy) |",
            "|---|---|---|---|---|",
            *cpu_lines,
            f"| (a) in-process loop (baseline) | {loop_cpu:.2f} (one process) | - | - "
            f"| {loop_others:.2f} |",
            "",
            f"(a) end to end: mean batch size {batch:.1f}; median per-frame timings (ms): "
            + ", ".join(f"{k} {val:.2f}" for k, val in e2e_t.items()),
            "",
            "(c) median per-frame parts of the added latency (ms): "
            + ", ".join(f"{k} {val:.2f}" for k, val in parts.items())
            + f"; mean batch size {median(x['mean_batch_size'] for x in lat):.2f}; "
            f"latest submission {max(x['max_submit_lateness_ms'] for x in lat):.1f} ms "
            "behind schedule",
        ]
    )


def history_row(report: dict[str, Any]) -> str:
    f = report["figures"]
    m = report["machine"]
    v = m["versions"]

    def cell(key: str) -> str:
        x = f[key]
        unit = x["unit"]
        if unit == "ms":
            plain = f" (plain {x['baseline_median']:.2f})" if "baseline_median" in x else ""
            return f"{x['median']:.2f} ms{plain}"
        if "ratio" in x:
            return f"{_fmt(x['median'], unit)} / {_fmt(x['baseline_median'], unit)} = {x['ratio']:.3f}x"
        return f"{_fmt(x['median'], unit)} ms"

    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']} | "
        f"py {v['python']}, torch {v['torch']}, celery {v['celery']}, kombu {v['kombu']} | "
        f"{cell('a')} | {cell('b_solo')} | {cell('b_threads')} | "
        f"{cell('b_two') if 'b_two' in f else '-'} | "
        f"{cell('c_p50')} / {cell('c_p99')} | {report['runtime_s']:.0f} s |"
    )


HISTORY_HEADER = (
    "| date | command | machine | versions | (a) resnet18 e2e / loop, frames/s | "
    "(b) noop / plain solo, frames/s | (b') noop / plain threads, frames/s | "
    "(b2) noop 2 processes / plain solo | (c) added p50 / p99 | run time |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    """Replace the latest-run block and append a row to the history table."""
    intro = f"\n## Latest run\n\n{BEGIN}\n{END}\n\n## History\n\n{HIST_BEGIN}\n{HISTORY_HEADER}\n{HIST_END}\n"
    marks = (BEGIN, END, HIST_BEGIN, HIST_END)
    update_doc_section(
        path, marks, intro, latest_block(report), HISTORY_HEADER, history_row(report)
    )
