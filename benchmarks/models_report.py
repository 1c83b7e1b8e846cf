"""``framepool bench models``: its report as text, and its section of docs/benchmarks.md.

The section is added at the end of the file the first time (a description and
two marked blocks); after that, each run rewrites the *latest* block and
appends a row to the *history* table, the way ``benchmarks.pipeline`` keeps
its own section. Nothing outside the markers is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, report_head, update_doc_section

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-models:latest:begin -->", "<!-- bench-models:latest:end -->"
HIST_BEGIN, HIST_END = "<!-- bench-models:history:begin -->", "<!-- bench-models:history:end -->"

INTRO = """
## `framepool bench models`

```
framepool bench models                # ~1 min on 2 quiet CPU cores
framepool bench models --batches 1,8 --repeats 2 --models resnet18
```

The models' own limits and the runtime's GPU costs, in one process on
whatever device there is (`cuda:0` when CUDA is available, else the CPU). It
writes `benchmarks/results/models.json` and rewrites the block below.

- **Throughput**: the network's forward pass alone (`model.infer` on a seeded
  random batch already on the device, `torch.inference_mode`), frames/s at each
  batch size; warm-up calls (1 on the CPU, 5 on CUDA), then `--repeats` timed
  repeats of at least 0.2 s each (the device synchronised around each), the
  median. fp32 everywhere; on CUDA also fp16 as pure half precision
  (`copy.deepcopy(net).half()` fed half inputs; not autocast). On CUDA both run
  channels_last; on the CPU, NCHW. The worker itself runs NCHW fp32 today.
  As in the worker, models are loaded and warmed up in the main thread and
  timed in another (with torch's OpenMP and one of the 2 cores busy elsewhere,
  a resnet18 forward pass at batch 1 from the thread that warmed up took 952 ms
  here, against 76 ms from another thread: see the OpenMP note above). The
  CPU time other processes took meanwhile is reported with each figure
  (`others_cpus` in the JSON) and summed up under the table.
  Default batches: 1, 8, 32 on the CPU; 1, 8, 32, 64 on CUDA (beyond the
  manifests' `max_batch_size` on purpose: these are the model's limits).
- **Memory**: `GPUManager.measure` around load + warm-up at the largest batch
  (the CUDA peak above what was allocated before; null on the CPU, where it
  measures nothing), and what stays allocated afterwards (the weights).
- **Profiler cost**: `shape_detector` and `resnet18` at batch 8 on
  synthetic-camera frames: host-to-device copy, `infer` and `postprocess` run
  plain and under `BatchProfiler.profile` alternately (after the profiler's
  one-off warm-up); medians of `--repeats`, their ratio, and the time spent
  folding `key_averages()` into the kernel table (part of the profiled time).
  Also shown: the profiler's own estimate (`stats()["overhead_ms_avg"]`: a
  profiled batch without the fold, minus its moving average of plain batches;
  noisy, it can come out negative), and its first session's warm-up, paid once
  per process (by the first model only).
- **OOM recovery** (CUDA only): a `ModelRunner` capped at 32 around a model
  that allocates free-memory / 12.5 per frame, so batches above 12 raise a real
  `torch.cuda.OutOfMemoryError`; 128 frames are queued at once and must all be
  answered `ok`. *Recovered in* is the time from the first OOM until the
  first (oversized) batch has been answered, in pieces.

### Latest run (models)

{BEGIN}
{END}

### History (models)

{HIST_BEGIN}
{HIST_HEADER}
{HIST_END}
"""

HIST_HEADER = (
    "| date | command | device | versions | best frames/s (batch) | measured MB "
    "| profiler ratio | OOM recovery | run time |\n|---|---|---|---|---|---|---|---|---|"
)


def command_line(
    models: Sequence[str] | None, batches: Sequence[int] | None, repeats: int | None
) -> str:
    """The command as typed, options left at their defaults omitted."""
    parts = ["framepool bench models"]
    if models is not None:
        parts.append(f"--models {','.join(models)}")
    if batches is not None:
        parts.append(f"--batches {','.join(map(str, batches))}")
    if repeats is not None:
        parts.append(f"--repeats {repeats}")
    return " ".join(parts)


def _device_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    g = m.get("gpu")
    if g is None:
        return f"cpu ({m['nproc']} CPUs, {m['cpu']}; torch threads {report['config']['torch_threads']})"
    return (
        f"{m['device']} {g['name']} ({g['total_mb'] / 1024:.0f} GiB, sm {g['capability']}), "
        f"CUDA {g['cuda']}, cuDNN {g['cudnn']}, TF32 convs {g['cudnn_tf32']}, "
        f"TF32 matmul {g['matmul_tf32']}, cudnn.benchmark {g['cudnn_benchmark']}"
    )


def _fps_cell(row: dict[str, Any]) -> str:
    if "fps" in row:
        return f"{row['fps']:.1f} ({row['ms_per_batch']:.1f} ms)"
    return "OOM" if "error" in row else "-"


def throughput_table(report: dict[str, Any]) -> list[str]:
    sizes = report["config"]["batches"]
    lines = [
        "| model | dtype | memory format | " + " | ".join(f"batch {b}" for b in sizes) + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    for model_id, res in report["throughput"].items():
        for dtype in ("fp32", "fp16"):
            rows = res.get(dtype)
            if rows is None or "skipped" in rows:
                continue
            cells = [_fps_cell(rows.get(str(b), {})) for b in sizes]
            lines.append(
                f"| {model_id} | {dtype} | {res['memory_format']} | " + " | ".join(cells) + " |"
            )
    return lines


def _mb(value: float | None) -> str:
    return "null" if value is None else f"{value:.1f}"


def latest_block(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    v = m["versions"]
    lines = [
        *report_head(report),
        f"- device: {_device_line(report)}",
        f"- versions: Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}",
        f"- {cfg['repeats']} repeats of >= {cfg['min_repeat_s']:g} s after "
        f"{cfg['warmup_calls']} warm-up call(s); dtypes {', '.join(cfg['dtypes'])}",
        "",
        "Throughput, frames/s (median; ms per batch in parentheses):",
        "",
        *throughput_table(report),
        "",
        _noise_line(report),
        "",
        "Memory (`GPUManager.measure`: load + warm-up at the batch given):",
        "",
        "| model | device | manifest estimate MB | measured peak MB | resident after MB "
        "| warm-up batch | load + warm-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    reasons = set()
    for model_id, mem in report["memory"].items():
        lines.append(
            f"| {model_id} | {mem['device']} | {mem['estimated_mb']:g} | {_mb(mem['measured_mb'])} "
            f"| {_mb(mem['resident_mb'])} | {mem['warmup_batch']} | {mem['load_warmup_s']:.2f} |"
        )
        if mem["reason"]:
            reasons.add(mem["reason"])
    for reason in sorted(reasons):
        lines += ["", f"null: {reason}."]
    lines += [
        "",
        f"Profiler cost per batch (batch {cfg['profile_batch']}, median ms):",
        "",
        "| model | plain | under BatchProfiler.profile | ratio | of which fold "
        "| BatchProfiler's overhead_ms_avg (no fold) | kernel rows cpu / cuda "
        "| first-session warm-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_id, p in report["profiler"].items():
        rows = p["kernel_rows"]
        lines.append(
            f"| {model_id} | {p['plain_ms']:.2f} | {p['profiled_ms']:.2f} | {p['ratio']:.2f}x "
            f"| {_ms(p['fold_ms'])} | {_ms(p['profiler_overhead_ms'])} "
            f"| {rows['cpu']} / {rows['cuda']} | {_ms(p['warm_up_ms'])} |"
        )
    lines += ["", f"OOM recovery: {_oom_text(report['oom'])}"]
    return "\n".join(lines)


def _noise_line(report: dict[str, Any]) -> str:
    figures = [
        row["others_cpus"]
        for res in report["throughput"].values()
        for rows in res.values()
        if isinstance(rows, dict)
        for row in rows.values()
        if isinstance(row, dict) and "others_cpus" in row
    ] + [p["others_cpus"] for p in report["profiler"].values()]
    worst = f"; at most {max(figures):.2f} during one figure" if figures else ""
    return (
        f"Noise: other processes kept {report['others_cpus']:.2f} CPUs busy on average "
        f"during the run{worst} (`/proc/stat`, as in `bench pipeline`)."
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _oom_text(oom: dict[str, Any]) -> str:
    if "skipped" in oom:
        return f"skipped ({oom['skipped']})."
    return (
        f"{oom['answered']}/{oom['frames']} frames answered, {oom['ok']} ok "
        f"(all ok: {'yes' if oom['all_ok'] else '**no**'}); {oom['ooms']} OOMs, "
        f"{oom['oom_splits']} splits; batch cap {oom['cap_limit']} -> {oom['cap_after']} "
        f"(fits up to {oom['fits_up_to']}; {oom['per_frame_mb']:.0f} MB per frame of "
        f"{oom['free_mb']:.0f} MB free); recovered in {oom['recover_s']} s, "
        f"all answered in {oom['total_s']:.2f} s; batches tried: "
        + ", ".join(map(str, oom["batches_tried"][:12]))
        + (" ..." if len(oom["batches_tried"]) > 12 else "")
    )


def history_row(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    device = m["device"] if m.get("gpu") is None else f"{m['device']} {m['gpu']['name']}"
    best = []
    for model_id, res in report["throughput"].items():
        for dtype in ("fp32", "fp16"):
            rows = {b: r for b, r in (res.get(dtype) or {}).items() if "fps" in r}
            if rows:
                b = max(rows, key=lambda k: rows[k]["fps"])
                best.append(f"{model_id} {dtype} {rows[b]['fps']:.1f} (b{b})")
    mem = ", ".join(f"{k} {_mb(x['measured_mb'])}" for k, x in report["memory"].items())
    prof = ", ".join(f"{k} {p['ratio']:.2f}x" for k, p in report["profiler"].items())
    oom = report["oom"]
    oom_cell = (
        "skipped"
        if "skipped" in oom
        else f"{oom['ok']}/{oom['frames']} ok, cap {oom['cap_limit']}->{oom['cap_after']}, "
        f"{oom['recover_s']} s"
    )
    return (
        f"| {report['date']} | `{report['command']}` | {device} | "
        f"py {v['python']}, torch {v['torch']} | {'; '.join(best)} | {mem} | {prof} | "
        f"{oom_cell} | {report['runtime_s']:.0f} s |"
    )


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    """Replace the latest-run block and append a row to the history table."""
    marks = {"BEGIN": BEGIN, "END": END, "HIST_BEGIN": HIST_BEGIN, "HIST_END": HIST_END}
    intro = INTRO.format(**marks, HIST_HEADER=HIST_HEADER)
    update_doc_section(
        path,
        (BEGIN, END, HIST_BEGIN, HIST_END),
        intro,
        latest_block(report),
        HIST_HEADER,
        history_row(report),
    )


def print_summary(report: dict[str, Any]) -> None:
    """The throughput table and the one-line results, for the terminal."""
    print()
    print(f"device: {_device_line(report)}")
    for line in throughput_table(report):
        print(line)
    for model_id, mem in report["memory"].items():
        print(
            f"memory {model_id}: measured {_mb(mem['measured_mb'])} MB ({mem['reason'] or 'cuda peak'})"
        )
    for model_id, p in report["profiler"].items():
        print(
            f"profiler {model_id}: {p['plain_ms']:.2f} ms plain, {p['profiled_ms']:.2f} ms "
            f"profiled ({p['ratio']:.2f}x), fold {_ms(p['fold_ms'])}"
        )
    print(f"OOM recovery: {_oom_text(report['oom'])}")
