"""``framepool bench sweep``: figures from the raw runs, tables, plots, and its
section of docs/benchmarks.md.

Every point's figure is the median of its repeats; each axis is set against its
first point (1 camera, 320x240, 1 worker, batch cap 1) from the same run. A run
of some axes keeps the others from the JSON it replaces, each with its own date,
so the docs block always shows every axis measured so far.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks import sweep_plots
from benchmarks.harness import ROOT, median, ratio, report_head, update_doc_section

DOCS = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
MARKS = (
    "<!-- bench-sweep:latest:begin -->",
    "<!-- bench-sweep:latest:end -->",
    "<!-- bench-sweep:history:begin -->",
    "<!-- bench-sweep:history:end -->",
)
ORDER = ("cameras", "frame_size", "workers", "batch_cap", "redis_memory")
TITLES = {
    "cameras": "Cameras",
    "frame_size": "Frame size",
    "workers": "Worker processes per device",
    "batch_cap": "Batch-size cap (`MAX_BATCH_SIZE`)",
    "redis_memory": "Redis memory per queued frame",
}
NAN = float("nan")


# ------------------------------------------------------------------ figures
def _med(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return median(values) if values else NAN


def point_label(axis: str, point: dict[str, Any]) -> str:
    if axis == "redis_memory":
        return f"{point['width']}x{point['height']}" + (
            f", {point['mode']}" if "mode" in point else ""
        )
    if axis == "frame_size":
        return f"{point['width']}x{point['height']}"
    return str(point[{"cameras": "cameras", "workers": "workers", "batch_cap": "batch_cap"}[axis]])


def build_figures(axis: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per point: medians of its repeats, and ratios to the axis's first point."""
    if axis == "redis_memory":
        return [{"label": point_label(axis, p), **p} for p in data["points"]]
    rows = []
    for p in data["points"]:
        runs = p["runs"]
        keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, int | float)})
        row: dict[str, Any] = {"label": point_label(axis, p), "repeats": len(runs)}
        row.update({k: v for k, v in p.items() if k != "runs" and not isinstance(v, list | dict)})
        row.update({k: round(_med(runs, k), 3) for k in keys})
        row["fps_runs"] = [r["steady_fps"] for r in runs]
        if axis == "cameras":
            bad = sum(n for r in runs for s, n in r["statuses"].items() if s != "ok")
            row["not_ok"] = bad
            row["kept_up"] = round(ratio(row["steady_fps"], p["offered_fps"]), 3)
        rows.append(row)
    if rows:
        base = rows[0]
        p99 = "client_p99_ms" if axis == "cameras" else "service_p99_ms"
        for row in rows:
            row["fps_rel"] = round(ratio(row["steady_fps"], base["steady_fps"]), 3)
            row["p99_rel"] = round(ratio(row.get(p99, NAN), base.get(p99, NAN)), 3)
            if axis == "workers":
                row["efficiency"] = round(row["fps_rel"] * base["workers"] / row["workers"], 3)
    return rows


# ------------------------------------------------------------------ tables
def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def axis_table(axis: str, rows: list[dict[str, Any]]) -> str:
    if axis == "cameras":
        header = ["cameras", "frames/s per camera", "offered frames/s", "achieved frames/s",
                  "kept up", "client p50 / p99 ms", "p99 vs 1 camera", "added p50 / p99 ms",
                  "mean batch", "not ok", "other CPUs"]  # fmt: skip
        body = [[r["label"], _f(r["per_camera_fps"], 3), _f(r["offered_fps"]), _f(r["steady_fps"]),
                 f"{_f(r['kept_up'], 2)}x", f"{_f(r['client_p50_ms'])} / {_f(r['client_p99_ms'])}",
                 f"{_f(r['p99_rel'], 2)}x", f"{_f(r['added_p50_ms'])} / {_f(r['added_p99_ms'])}",
                 _f(r["mean_batch_size"]), str(r["not_ok"]), _f(r.get("others_cpus"), 2)]
                for r in rows]  # fmt: skip
    elif axis == "redis_memory":
        header = ["frame, bytes", "JPEG KB", "message KB", "frame key KB",
                  "MEMORY USAGE KB per frame", "used_memory KB per frame", "used / JPEG",
                  "message body"]  # fmt: skip
        body = [[r["label"], _f(r["jpeg_bytes"] / 1024), _f(r["message_bytes"] / 1024),
                 _f(r.get("frame_key_bytes", 0) / 1024), _f(r["stored_bytes_per_frame"] / 1024),
                 _f(r["used_bytes_per_frame"] / 1024), f"{_f(r['used_ratio'], 2)}x",
                 r.get("body_encoding", "?")] for r in rows]  # fmt: skip
    else:
        first = {"frame_size": "frame", "workers": "worker processes", "batch_cap": "batch cap"}
        header = [first[axis], "frames/s (median)", "vs first", "service p50 / p99 ms",
                  "p99 vs first", "e2e p99 ms", "mean batch"]  # fmt: skip
        if axis == "frame_size":
            header[1:1] = ["JPEG KB"]
            header += ["decode ms"]
        if axis == "workers":
            header += ["efficiency"]
        if axis == "batch_cap":
            header += ["inference ms"]
        header += ["other CPUs", "repeats (frames/s)"]
        body = []
        for r in rows:
            cells = [r["label"], _f(r["steady_fps"]), f"{_f(r['fps_rel'], 2)}x",
                     f"{_f(r.get('service_p50_ms'))} / {_f(r.get('service_p99_ms'))}",
                     f"{_f(r['p99_rel'], 2)}x", _f(r.get("e2e_p99_ms")),
                     _f(r.get("mean_batch_size"))]  # fmt: skip
            if axis == "frame_size":
                cells[1:1] = [_f(r["jpeg_bytes"] / 1024)]
                cells.append(_f(r.get("decode_ms"), 2))
            if axis == "workers":
                cells.append(_f(r["efficiency"], 2))
            if axis == "batch_cap":
                cells.append(_f(r.get("inference_ms"), 1))
            cells.append(_f(r.get("others_cpus"), 2))
            cells.append(", ".join(_f(v) for v in r["fps_runs"]))
            body.append(cells)
    return _md(header, body)


def axis_note(axis: str, d: dict[str, Any]) -> str:
    when = f"measured {d['date']} by `{d['command']}` ({d['runtime_s']:.0f} s)"
    if axis == "cameras":
        load = (f"{d['camera_fps']:g} frames/s per camera" if d.get("camera_fps")
                else f"total offered load {d['load']:g} x the closed-loop capacity "
                     f"({d['capacity_fps']:.1f} frames/s) shared by the cameras")  # fmt: skip
        return (f"`{d['model']}`, {d['frame']} JPEG, MAX_BATCH_SIZE={d['max_batch_size']}; "
                f"{load}; random phases; {d['warmup_s']:g} s warm-up + {d['window_s']:g} s "
                f"measured per run; {when}.")  # fmt: skip
    if axis == "redis_memory":
        return (f"{d['frames']} frames of `{d['model']}` queued per size, no worker running; "
                f"{when}.")  # fmt: skip
    extra = f", {d['frames']} frames per repeat" if "frames" in d else ""
    return (f"`{d['model']}`, closed loop (32-64 frames outstanding){extra}, torch threads "
            f"{d.get('torch_threads') or 'auto'}; {when}.")  # fmt: skip


def tables(report: dict[str, Any]) -> str:
    parts = []
    for axis in ORDER:
        if axis in report["axes"]:
            d = report["axes"][axis]
            parts += [f"#### {TITLES[axis]}", "", axis_note(axis, d), "",
                      axis_table(axis, build_figures(axis, d)), ""]  # fmt: skip
            if axis in report.get("plots", {}):
                parts += [f"![{TITLES[axis]}]({report['plots'][axis]})", ""]
    return "\n".join(parts).rstrip()


# ------------------------------------------------------------------ docs
INTRO = f"""
## `framepool bench sweep`

```
framepool bench sweep                         # all five axes, ~12-15 min on 2 quiet cores
framepool bench sweep --axes cameras,redis_memory
framepool bench sweep --quick --no-docs       # ~3 min trial; JSON and plots beside --out
```

Where the cost grows (issue #7, item 3). Each axis starts its own `framepool
worker` processes (as `framepool up --workers-per-gpu N` plans them) against
one private `redis-server` (as `framepool up` runs it) and stops them
afterwards; frames are synthetic-camera JPEGs (q90, 8 distinct, cycled). Every
figure is the median of `--repeats` (2) repeats, set against the axis's first
point from the same run (1 camera, 320x240, 1 worker, batch cap 1). The bench
writes `benchmarks/results/sweep.json`, plots into `docs/img/sweep-*.png`
(matplotlib, in the `bench` extra: `pip install 'matplotlib>=3.7'`; without it
the tables are still written and the plots skipped, with a message) and rewrites the block below. A
run of some axes (`--axes`) keeps the others from the last JSON, each with its
own date. *Other CPUs* is how many CPUs' worth of work processes outside the
benchmark did meanwhile (noise: the figures are only comparable where it is
near 0).

- **cameras** (1, 4, 16, 64, 256): N synthetic cameras in one producer
  process, each sending at a fixed rate from a random phase of its own (open
  loop: frames go in on schedule whatever the results do; the frames due
  together in one `submit_many`; a reader thread takes the results with
  `FrameHandle.get` in submission order, since Celery's `AsyncResult.get` waits
  in steps of a second whatever its timeout). The total offered load is held at
  half (`--load`) the capacity measured in the same run (closed loop), so
  throughput should stay level and what moves is the latency of many
  unsynchronised streams against one evenly spaced one; `--camera-fps F`
  instead fixes each camera's rate, to find where it saturates. Model
  `shape_detector` (the camera model): `resnet18` does ~32 frames/s on 2 cores,
  so 256 cameras at half of that would each send a frame every 16 s and a short
  window would see none from most. 3 s warm-up then 12 s measured per run.
  *Client* latency is `submit` to `get` returning; *added* is `completed_at -
  enqueued_at` less inference; *not ok* counts frames expired or failed.
- **frame size** (320x240, 640x480, 1280x720, 1920x1080): closed loop,
  `resnet18`, `MAX_BATCH_SIZE=8`; the worker decodes at a reduced DCT scale
  where the model's input allows (`framepool.codec.decode(min_size=...)`);
  *decode ms* is the results' `timings_ms.decode`.
- **worker processes per device** (1, 2, 4): `benchmarks.scale.measure`, the
  code of `framepool bench scale` (CPU threads shared among the workers).
- **batch cap** (`MAX_BATCH_SIZE` 1, 2, 4, 8, 16; worker concurrency twice
  that): closed loop, `resnet18`, a fresh worker per cap.
- **Redis memory per queued frame**: 100 frames of each size queued with no
  worker running, claim-checked (`FRAME_CLAIM_CHECK`, the frame's bytes under
  a key of their own) and in the Celery message (kombu's Redis transport then
  keeps the msgpack body base64-encoded in its JSON envelope); per frame:
  `used_memory` (`INFO memory`) after less before (allocator rounding
  included), `MEMORY USAGE` of the queue's list plus the frame keys, and the
  mean message and frame-key lengths, against the JPEG's own size.

Closed loop keeps 32-64 frames outstanding, so *e2e* latency (`completed_at -
enqueued_at`) there is mostly the producer's own backlog in the queue;
*service* latency is e2e less that queue wait: from the worker receiving the
frame to its result, which includes waiting behind the frames the worker
already holds (its concurrency, 2 x `MAX_BATCH_SIZE`) as well as its own
batch's decode, inference and postprocess.

### Latest run (sweep)

{MARKS[0]}
Not run yet: `framepool bench sweep`.
{MARKS[1]}

### History (sweep)

{MARKS[2]}
{{header}}
{MARKS[3]}
"""

HISTORY_HEADER = (
    "| date | command | machine | cameras: client p99 ms, 1 / most | frame size: frames/s, "
    "smallest / largest | workers: frames/s, 1 / most | batch cap: frames/s, 1 / largest | "
    "Redis bytes per frame / JPEG | run time |\n|---|---|---|---|---|---|---|---|---|"
)


def latest_block(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    carried = [a for a in ORDER if a in report["axes"] and a not in report["measured"]]
    lines = [
        *report_head(report),
        f"- versions: Python {v['python']}, torch {v['torch']}, Celery {v['celery']}, "
        f"kombu {v['kombu']}, redis-server {v['redis-server']}",
    ]
    if carried:
        lines.append(f"- kept from earlier runs: {', '.join(carried)} (dates below)")
    for axis, err in report.get("errors", {}).items():
        lines.append(f"- **{axis} failed**: {err}")
    if report.get("plots_skipped"):
        lines.append(f"- plots skipped: {report['plots_skipped']}")
    return "\n".join([*lines, "", tables(report)])


def history_row(report: dict[str, Any]) -> str:
    figs = {a: build_figures(a, report["axes"][a]) for a in report["measured"]}

    def ends(axis: str, key: str, digits: int = 1) -> str:
        rows = figs.get(axis)
        if not rows:
            return "-"
        a, b = rows[0], rows[-1]
        return f"{a['label']}: {_f(a.get(key), digits)} / {b['label']}: {_f(b.get(key), digits)}"

    mem_cell = "-"
    if "redis_memory" in figs:
        by_mode: dict[str, list[float]] = {}
        for r in figs["redis_memory"]:
            by_mode.setdefault(r.get("mode", "in message"), []).append(r["used_ratio"])
        mem_cell = ", ".join(f"{m} {v[0]:.2f}-{v[-1]:.2f}x" for m, v in by_mode.items())
    m = report["machine"]
    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']} | "
        f"{ends('cameras', 'client_p99_ms')} | {ends('frame_size', 'steady_fps')} | "
        f"{ends('workers', 'steady_fps')} | {ends('batch_cap', 'steady_fps')} | {mem_cell} | "
        f"{report['runtime_s']:.0f} s |"
    )


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    intro = INTRO.replace("{header}", HISTORY_HEADER)
    update_doc_section(path, MARKS, intro, latest_block(report), HISTORY_HEADER,
                       history_row(report))  # fmt: skip


# ------------------------------------------------------------------ saving
def merge_previous(report: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """Copy into ``report`` the axes of ``previous`` it did not measure; their names."""
    if not previous or not isinstance(previous.get("axes"), dict):
        return []
    kept = [a for a in ORDER if a in previous["axes"] and a not in report["axes"]]
    for axis in kept:
        report["axes"][axis] = previous["axes"][axis]
    report["axes"] = {a: report["axes"][a] for a in ORDER if a in report["axes"]}
    return kept


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(
    report: dict[str, Any], out: Path, docs: bool, docs_path: Path = DOCS, img_dir: Path = IMG
) -> int:
    """Merge, plot, write the JSON, print the tables and (``docs``) rewrite the docs block."""
    kept = merge_previous(report, _read_json(out))
    if kept:
        print(f"kept from {out}: {', '.join(kept)}")
    plot_dir = img_dir if docs else out.parent
    written, skipped = sweep_plots.render(report, plot_dir)
    link_base = docs_path.parent if docs else out.parent
    report["plots"] = {a: _rel(p, link_base) for a, p in written.items()}
    if skipped:
        report["plots_skipped"] = skipped
        print(f"plots skipped: {skipped}")
    for p in written.values():
        print(f"plot {p}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(tables(report))
    print(f"\nrun time {report['runtime_s']:.0f} s; JSON in {out}")
    if not docs:
        print("docs untouched (--no-docs)")
        return 0
    try:
        update_docs(report, docs_path)
        print(f"updated {docs_path}")
    except OSError as exc:
        print(f"could not update {docs_path}: {exc}")
    return 0


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
