"""``framepool bench monitor``: figures from the raw measurements, and its section of docs/benchmarks.md.

The section is added at the end of the file the first time; after that each run
rewrites its *latest* block and appends a row to its *history* table
(:func:`benchmarks.harness.update_doc_section`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ROOT,
    median,
    percentile,
    ratio,
    report_head,
    update_doc_section,
)

DOCS = ROOT / "docs" / "benchmarks.md"
MARKS = (
    "<!-- bench-monitor:latest:begin -->",
    "<!-- bench-monitor:latest:end -->",
    "<!-- bench-monitor:history:begin -->",
    "<!-- bench-monitor:history:end -->",
)
GOALS = {"b_render": 20.0, "c_cpu": 1.0}  # ms, % of one core

HIST_HEADER = (
    "| date | command | machine | (a) read ms (cold) | (b) /metrics ms, size | "
    "(c) CPU % (poll / ws / scrape / other) | with 1 dashboard | idle monitor | run time |\n"
    "|---|---|---|---|---|---|---|---|---|"
)

INTRO = f"""
## `framepool bench monitor`

```
framepool bench monitor                      # ~2-3 min
framepool bench monitor --duration 60 --repeats 5
```

The monitor service at the scale of a full cluster: 8 GPUs on 2 hosts, 4 workers
per GPU, 5 models per worker (32 workers, 160 worker-model pairs). A private
`redis-server` (as `framepool up` starts it) holds the heartbeats, written the
way `workers/heartbeat.py` writes them, of workers simulated by
`benchmarks/monitor_cluster.py`: each model with a real `workers.stats.ModelStats`
(all eight stage histograms, frame and batch sizes) fed with random batches, and
100 kernel rows shaped like `KernelTable.top()` (long CUDA template names and
CPU ops). They are written by the workers' own `workers.heartbeat.Heartbeat`: a
~11 KB heartbeat (histograms as counts) and, under a key of its own, a ~150 KB
kernel table, rewritten only when its stamp moves. 20 real frames
(640x480 JPEG, `FrameProducer`) wait in each model's queue. Heartbeats are
rewritten on the workers' schedule: each worker every 5 s
(`HEARTBEAT_INTERVAL_SECONDS`), staggered, its counters and histograms grown by
40 frames per model; kernel rows stay (profiling is on demand by default).
It writes `benchmarks/results/monitor.json` and rewrites the block below.

- **(a) `ClusterReader.read()`** in the benchmark process (garbage collector set
  up as `framepool monitor` sets it, `monitoring.app.configure_gc`): one cold read
  (a new reader), then `--reads` reads with one second's worth of heartbeat
  rewrites (7 workers) before each; wall time (CPU time in the JSON).
- **(b) `GET /metrics`** through the real FastAPI app (`create_app(poll=False)`,
  Starlette's `TestClient`, in process): before each scrape every worker's
  heartbeat rewritten once and a `refresh()`, so every scrape meets a new
  snapshot and new heartbeats, as Prometheus does every 15 s; the size of the
  answer; the same snapshot scraped again. Goal: under
  {GOALS["b_render"]:g} ms.
- **(c) CPU of the monitor process per second of wall time**: `python -m
  benchmarks.monitor_serve` is `framepool monitor` (the app under uvicorn, its
  poll loop: every second while watched, every 5 s when nobody looks) plus CPU accounting: `time.thread_time` around
  `MonitorState.refresh` (*poll*: `read()` and the alert rules) and around
  `responses.stream_message` (*ws*: the WebSocket message), and an endpoint
  that answers `time.process_time()`. `GET /metrics` over HTTP every 15 s; the
  process's CPU across each scrape, less the poll and ws time counted meanwhile,
  is *scrape*; the rest (event loop, uvicorn, the accounting calls' own cost
  taken out) is *other*. Three processes run side by side for `--repeats`
  windows of `--duration` s after a 10 s warm-up: the monitor alone, the monitor
  with one dashboard client on `WS /api/v1/gpu/stream`, and, as the baseline, a
  monitor of an empty Redis database (no workers). Goal: under
  {GOALS["c_cpu"]:g} % of one core.

### Latest run (monitor)

{MARKS[0]}
{MARKS[1]}

### History (monitor)

{MARKS[2]}
{HIST_HEADER}
{MARKS[3]}
"""


def _fig(name: str, unit: str, runs: list[float], **extra: Any) -> dict[str, Any]:
    return {"name": name, "unit": unit, "median": round(median(runs), 3),
            "runs": [round(v, 3) for v in runs], **extra}  # fmt: skip


def build_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    d = report["details"]
    read, render, cpu = d["read"], d["render"], d["cpu"]
    cfg = report["config"]
    pairs = cfg["workers"] * cfg["models_per_worker"]
    figs = {
        "a_read": _fig(
            "(a) ClusterReader.read(), 1 s of rewrites before each", "ms", read["runs_ms"],
            p90=round(percentile(read["runs_ms"], 90), 3), cpu_ms=round(median(read["cpu_ms"]), 3),
            cold_ms=round(read["cold_ms"], 3),
        ),
        "b_render": _fig(
            "(b) GET /metrics, new snapshot (TestClient)", "ms", render["runs_ms"],
            p90=round(percentile(render["runs_ms"], 90), 3),
            same_snapshot_ms=round(median(render["same_snapshot_ms"]), 3),
            bytes=render["bytes"], lines=render["lines"], samples=render["samples"],
            samples_per_pair=round(render["samples"] / pairs, 2),
        ),
    }  # fmt: skip
    if cpu["scrape_ms"]:
        figs["b_http"] = _fig("(b') GET /metrics over HTTP (uvicorn), client side", "ms",
                              cpu["scrape_ms"])  # fmt: skip
    idle = [r["cpu_percent"] for r in cpu["idle"]]
    for key, name, label in (
        ("c_cpu", "cluster", "(c) monitor CPU, scrape every 15 s, no dashboard"),
        ("c_cpu_ws", "cluster_ws", "(c') the same with one dashboard (WebSocket) client"),
    ):
        runs = [r["cpu_percent"] for r in cpu[name]]
        figs[key] = _fig(label, "% of a core", runs, baseline_median=round(median(idle), 4),
                         ratio=round(ratio(median(runs), median(idle)), 2),
                         parts={p: round(median(r["parts_percent"][p] for r in cpu[name]), 4)
                                for p in ("poll", "stream", "scrape", "other")},
                         poll_ms_each=round(median(r["poll_ms_each"] for r in cpu[name]), 3),
                         scrape_cpu_ms_each=round(median(r["scrape_cpu_ms_each"] or 0.0 for r in cpu[name]), 3))  # fmt: skip
    for key in ("b_render", "b_http"):
        if key in figs:
            figs[key].update(goal=f"< {GOALS['b_render']:g} ms",
                             met=figs[key]["median"] < GOALS["b_render"])  # fmt: skip
    figs["c_cpu"].update(
        goal=f"< {GOALS['c_cpu']:g} %", met=figs["c_cpu"]["median"] < GOALS["c_cpu"]
    )
    return figs


def _met(f: dict[str, Any]) -> str:
    return "-" if "met" not in f else ("yes" if f["met"] else "**no**")


def _n(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def _table(cfg: dict[str, Any]) -> str:
    size = cfg.get("kernel_table_bytes")
    if not size:
        return ""
    return f" (kernel table {size / 1024:.0f} KB under its own key, rewritten after profiling)"


def latest_block(report: dict[str, Any]) -> str:
    m, cfg, f = report["machine"], report["config"], report["figures"]
    v = m["versions"]
    rows = ["| figure | median | baseline (median) | ratio | goal | met | repeats |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in f.values():
        base = f"{_n(x['baseline_median'], 3)} (idle monitor)" if "baseline_median" in x else "-"
        rat = f"{x['ratio']:.1f}x" if "ratio" in x else "-"
        runs = ", ".join(_n(r) for r in x["runs"][:12]) + (" ..." if len(x["runs"]) > 12 else "")
        rows.append(f"| {x['name']} | {_n(x['median'])} {x['unit']} | {base} | {rat} | "
                    f"{x.get('goal', '-')} | {_met(x)} | {runs} |")  # fmt: skip
    parts = ["| monitor | CPU % of a core | poll | ws message | scrapes | other | of all: GC "
             "| polls/s | CPU ms per poll | CPU ms per scrape |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    cpu = report["details"]["cpu"]
    for name, label in (("cluster", "32 workers"), ("cluster_ws", "32 workers + 1 dashboard"),
                        ("idle", "no workers (baseline)")):  # fmt: skip
        runs = cpu[name]
        med = {k: median(r["parts_percent"][k] for r in runs) for k in runs[0]["parts_percent"]}
        polls = median(r["polls"] / r["wall_s"] for r in runs)
        parts.append(
            f"| {label} | {_n(median(r['cpu_percent'] for r in runs), 3)} | "
            + " | ".join(_n(med[k], 3) for k in ("poll", "stream", "scrape", "other"))
            + f" | {_n(median(r.get('gc_percent', 0.0) for r in runs), 3)}"
            + f" | {polls:.2f} | {_n(median(r['poll_ms_each'] for r in runs))} | "
            f"{_n(median(r['scrape_cpu_ms_each'] or 0.0 for r in runs))} |"
        )
    b = f["b_render"]
    busy = cpu.get("machine_busy_cpus", [])
    return "\n".join([
        *report_head(report),
        f"- versions: Python {v['python']}, redis-py {v['redis']}, redis-server {v['redis-server']}",
        f"- cluster: {cfg['workers']} workers on {cfg['gpus']} GPUs ({cfg['hosts']} hosts), "
        f"{cfg['models_per_worker']} models each, {cfg['kernels_per_model']} kernel rows per model, "
        f"heartbeat {cfg['heartbeat_bytes'] / 1024:.0f} KB rewritten every "
        f"{cfg['heartbeat_interval_s']:g} s{_table(cfg)}; {cfg['queued_frames']} queued frames; "
        f"poll every {cfg['poll_interval_s']:g} s while watched (a WebSocket client, or a "
        f"request in the last two polls), every {cfg.get('idle_poll_interval_s', cfg['poll_interval_s']):g} s "
        f"otherwise, scrape every {cfg['scrape_interval_s']:g} s; "
        f"{cfg['reads']} reads for (a), {len(b['runs'])} scrapes for (b), "
        f"{cfg['repeats']} x {cfg['duration_s']:g} s for (c)",
        "",
        *rows,
        "",
        f"(a) cold read (new reader, every heartbeat parsed): {_n(f['a_read']['cold_ms'])} ms; "
        f"CPU per steady read {_n(f['a_read']['cpu_ms'])} ms; p90 {_n(f['a_read']['p90'])} ms.",
        "",
        f"(b) /metrics: {b['bytes'] / 1024:.0f} KB, {b['lines']} lines, {b['samples']} samples "
        f"({b['samples_per_pair']:.1f} per worker-model pair); the same snapshot scraped again: "
        f"{_n(b['same_snapshot_ms'])} ms; p90 {_n(b['p90'])} ms.",
        "",
        "(c) where the CPU went, % of one core (median of the windows):",
        "",
        *parts,
        "",
        f"WebSocket: {cpu.get('ws_messages_per_s', 0)} messages/s of ~"
        f"{(cpu.get('ws_message_bytes') or 0) / 1024:.0f} KB. Noise: the whole machine kept "
        f"{median(busy) if busy else float('nan'):.2f} CPUs busy per window (the benchmark "
        "itself, Redis and the three monitors included).",
    ])  # fmt: skip


def history_row(report: dict[str, Any]) -> str:
    f, m = report["figures"], report["machine"]
    a, b, c, cw = f["a_read"], f["b_render"], f["c_cpu"], f["c_cpu_ws"]
    p = c["parts"]
    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']} | "
        f"{_n(a['median'])} ({_n(a['cold_ms'])}) | {_n(b['median'])} ms, "
        f"{b['bytes'] / 1024:.0f} KB / {b['lines']} lines | {_n(c['median'], 3)} ("
        + " / ".join(_n(p[k], 3) for k in ("poll", "stream", "scrape", "other"))
        + f") | {_n(cw['median'], 3)} | {_n(c['baseline_median'], 3)} | {report['runtime_s']:.0f} s |"
    )


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    update_doc_section(path, MARKS, INTRO, latest_block(report), HIST_HEADER, history_row(report))


def print_summary(report: dict[str, Any]) -> None:
    print()
    for x in report["figures"].values():
        extra = f" (goal {x['goal']}: {'met' if x['met'] else 'NOT met'})" if "goal" in x else ""
        base = f", idle monitor {x['baseline_median']:.3f}" if "baseline_median" in x else ""
        print(f"{x['name']}: {x['median']:.3f} {x['unit']}{base}{extra}")
    b = report["figures"]["b_render"]
    print(f"/metrics: {b['bytes'] / 1024:.0f} KB, {b['lines']} lines, {b['samples']} samples")
