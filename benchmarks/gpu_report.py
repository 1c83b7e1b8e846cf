"""``framepool bench gpu``'s figures, summary and docs block (no I/O but the docs file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, median, print_rows, report_head, update_doc_section

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-gpu:latest:begin -->", "<!-- bench-gpu:latest:end -->"
HIST_BEGIN, HIST_END = "<!-- bench-gpu:history:begin -->", "<!-- bench-gpu:history:end -->"
HIST_HEADER = (
    "| date | device | model | batch | limit frames/s | framepool frames/s (x limit) "
    "| GPU util % | plain Celery frames/s | framepool / plain |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
HEADER = ["system", "frames/s", "x limit", "GPU util %", "limit's util %", "mean batch",
          "CPU ms/frame: workers / producers", "busiest worker / producer (CPUs)"]  # fmt: skip
GOALS = {"ratio": 0.8, "util": 90.0, "vs_plain": 3.0}


def _med(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(median(values), 3) if values else None


def build_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Per system: medians over the repeats (throughput, ratio to its paired limit
    run, GPU utilization); then the best framepool against plain Celery."""
    systems: dict[str, dict[str, Any]] = {}
    for name, runs in report["details"].items():
        systems[name] = {
            "steady_fps": _med(runs, "steady_fps"),
            "ratio": _med(runs, "ratio"),
            "gpu_util_percent": _med(runs, "gpu_util_percent"),
            "limit_fps": _med(runs, "limit_fps"),
            "limit_gpu_util_percent": _med(runs, "limit_gpu_util_percent"),
            "mean_batch_size": _med(runs, "mean_batch_size"),
            "repeats": len(runs),
        }
        for field, kinds in (("cpu_ms_per_frame", ("worker", "producer", "redis")),
                             ("busiest_cpus", ("worker", "producer"))):  # fmt: skip
            have = [r[field] for r in runs if field in r]
            if have:
                systems[name][field] = {
                    k: round(median(h.get(k, 0.0) for h in have), 3) for k in kinds
                }
    fp = {k: v for k, v in systems.items() if k.startswith("framepool_")}
    best = max(fp, key=lambda k: fp[k]["steady_fps"] or 0.0) if fp else None
    plain = systems.get("plain_celery", {}).get("steady_fps")
    out: dict[str, Any] = {"systems": systems, "best_framepool": best}
    if best and plain:
        out["framepool_vs_plain"] = round(fp[best]["steady_fps"] / plain, 2)
    return out


def _f(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, s in report["figures"]["systems"].items():
        label = name.replace("framepool_", "framepool, ") + (
            " worker(s)" if name.startswith("framepool_") else ""
        )
        cpu, busy = s.get("cpu_ms_per_frame"), s.get("busiest_cpus")
        rows.append([label, _f(s["steady_fps"]), _f(s["ratio"], ".2f"),
                     _f(s["gpu_util_percent"], ".1f"), _f(s["limit_gpu_util_percent"], ".1f"),
                     _f(s["mean_batch_size"], ".1f"),
                     f"{cpu['worker']:.2f} / {cpu['producer']:.2f}" if cpu else "-",
                     f"{busy['worker']:.2f} / {busy['producer']:.2f}" if busy else "-"])  # fmt: skip
    return rows


def goal_lines(report: dict[str, Any]) -> list[str]:
    fig = report["figures"]
    best = fig.get("best_framepool")
    if best is None:
        return ["- no framepool run"]
    s = fig["systems"][best]

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    util = s["gpu_util_percent"]
    vs = fig.get("framepool_vs_plain")
    return [
        f"- end to end >= {GOALS['ratio']} of the limit: {s['ratio']:.2f}x "
        f"({best.replace('_', ', ')} worker(s)): {verdict(s['ratio'] >= GOALS['ratio'])}",
        f"- GPU utilization >= {GOALS['util']:.0f}% at saturation: "
        + (
            "not measured (no NVML reading)"
            if util is None
            else f"{util:.1f}%: {verdict(util >= GOALS['util'])}"
        ),  # fmt: skip
        f"- >= {GOALS['vs_plain']:.0f}x plain Celery: "
        + ("not measured" if vs is None else f"{vs:.2f}x: {verdict(vs >= GOALS['vs_plain'])}"),
    ]


def latest_block(report: dict[str, Any]) -> str:
    cfg, m = report["config"], report["machine"]
    lines = report_head(report)
    lines += [
        f"- device: {m.get('gpu', m['device'])} ({m['device']}), torch {m['versions'].get('torch')}"
        f", CUDA {m['versions'].get('cuda', '-')}",
        f"- {cfg['model']} in {cfg['precision']}, JPEG decoded on the "
        f"{'GPU (nvJPEG)' if cfg.get('jpeg_on_device') else 'CPU'}, "
        f"batch cap {cfg['max_batch_size']}, "
        f"{cfg['jpeg_kb']} KB 640x480 JPEG q90 frames; {cfg['frames']} frames a run, "
        f"{cfg['repeats']} repeats; {cfg['clients']} producer processes with "
        f"{cfg['outstanding_per_client'][0]}-{cfg['outstanding_per_client'][1]} frames "
        f"outstanding each; the limit with {cfg['decode_threads']} decode threads; plain "
        f"Celery with {cfg['plain_concurrency']} threads",
    ]
    mps = cfg.get("mps") or {}  # runs from before CUDA_MPS have none
    if mps:
        lines.append("- MPS (CUDA_MPS): " + "; ".join(f"{w} worker(s) {v}" for w, v in mps.items()))
    lines += [
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    lines += ["", "Goals:", *goal_lines(report)]
    return "\n".join(lines)


def history_row(report: dict[str, Any]) -> str:
    fig, cfg, m = report["figures"], report["config"], report["machine"]
    best = fig.get("best_framepool")
    s = fig["systems"].get(best or "", {})
    plain = fig["systems"].get("plain_celery", {})
    return (
        f"| {report['date']} | {m.get('gpu', m['device'])} | {cfg['model']} {cfg['precision']} "
        f"| {cfg['max_batch_size']} | {_f(s.get('limit_fps'))} | {_f(s.get('steady_fps'))} "
        f"({_f(s.get('ratio'), '.2f')}x, {(best or '-').replace('framepool_', '')} worker(s)) "
        f"| {_f(s.get('gpu_util_percent'), '.1f')} | {_f(plain.get('steady_fps'))} "
        f"| {_f(fig.get('framepool_vs_plain'), '.2f')}x |"
    )


def intro() -> str:
    return f"""
## GPU end to end (`framepool bench gpu`)

One model on one GPU (resnet50, fp16 from its manifest, batch cap 64), in one run:
the model's own limit (a hand-written loop with one thread per CPU preparing the
next batches while the GPU runs this one; JPEG decoded on the GPU where the
worker does so too), framepool with 1, 2 ... worker processes on the GPU
(`--workers`), and plain Celery (one frame per task, batch 1). Each framepool and plain Celery run is paired with
a limit run just before it, ratios are per pair, medians over the repeats. GPU
utilization is NVML's, sampled every 0.1 s over the steady window.
`benchmarks/gpu.py` says how each is measured.

{BEGIN}
{END}

History:

{HIST_BEGIN}
{HIST_END}
"""


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    """Replace the latest-run block and append a row to the history table."""
    update_doc_section(path, (BEGIN, END, HIST_BEGIN, HIST_END), intro(),
                       latest_block(report), HIST_HEADER, history_row(report))  # fmt: skip


def print_summary(report: dict[str, Any]) -> None:
    print_rows(HEADER, table_rows(report))
    for line in goal_lines(report):
        print(line)
