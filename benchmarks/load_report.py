"""``make load``: the long load tests' figures (tests/artifacts/load/*.json) into docs/benchmarks.md.

``make load`` runs ``FRAMEPOOL_LOAD=long pytest tests/load`` (the reference's
concurrent, burst, sustained, memory and Locust runs against a real gateway and
a real worker), then this module rewrites the "load" section's latest block and
appends a history row. ``python -m benchmarks.load_report`` does the second step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, machine_info, update_doc_section

ARTIFACTS = ROOT / "tests" / "artifacts" / "load"
DOCS = ROOT / "docs" / "benchmarks.md"
MARKS = (
    "<!-- load:latest:begin -->",
    "<!-- load:latest:end -->",
    "<!-- load:history:begin -->",
    "<!-- load:history:end -->",
)
ORDER = ("concurrent_10", "concurrent_50", "burst", "sustained", "memory", "locust")
HIST_HEADER = (
    "| date | machine | 10 clients p50/p99 ms | 50 clients p50/p99 ms, frames/s | "
    "Locust p50/p99 ms, errors | RSS growth (worker, gateway) MB |\n|---|---|---|---|---|---|"
)
INTRO = f"""
## `make load`

```
make load        # FRAMEPOOL_LOAD=long pytest tests/load, then this section (~6 min)
```

The reference document's load tests against a real gateway and one real
`shape_detector` CPU worker on a real Redis: 10 and 50 concurrent clients,
three bursts of 50, a paced 5 requests/s for 60 s, 3000 frames for memory
growth, and the Locust file (`tests/load/locustfile.py`: `InferenceUser` and
`MultiModelUser`) for 120 s with 20 users. Targets (from the reference): p50 <
100 ms, p99 < 500 ms, errors < 1 %. `make test` runs the same tests short and
asserts only what must always hold (every request answered with its own
correlation id, errors < 1 %, no memory growth); the latencies are recorded here.

### Latest run

{MARKS[0]}
{MARKS[1]}

### History

{MARKS[2]}
{MARKS[3]}
"""


def load_runs(folder: Path = ARTIFACTS) -> dict[str, dict[str, Any]]:
    runs = {}
    for name in ORDER:
        path = folder / f"{name}.json"
        if path.exists():
            runs[name] = json.loads(path.read_text())
    return runs


def _met(run: dict[str, Any]) -> str:
    missed = run.get("missed_targets")
    if missed is None:  # the Locust summary says which targets it met
        missed = [k for k, ok in run.get("met", {}).items() if not ok]
    return "all met" if not missed else "missed: " + "; ".join(missed)


def latest_block(runs: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    rows = [
        "| run | clients | requests | p50 ms | p99 ms | frames/s | errors | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        clients = r.get("clients", r.get("users", "?"))
        rate = r.get("throughput_per_s", r.get("rps", 0.0))
        rows.append(
            f"| {name} | {clients} | {r['requests']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {rate:.1f} | {r['error_rate']:.2%} | {_met(r)} |"
        )
    mem = runs.get("memory", {})
    growth = mem.get("rss_growth_mb", {})
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"Run of {when} on {machine['nproc']} cores ({machine['cpu']}), CPU worker.",
        "",
        *rows,
    ]
    if growth:
        lines += [
            "",
            "RSS growth after the memory run's frames (warmed-up baseline): "
            + ", ".join(f"{k} {v:+.1f} MB" for k, v in growth.items()),
        ]
    return "\n".join(lines)


def history_row(runs: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    def pair(name: str) -> str:
        r = runs.get(name)
        return f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}" if r else "-"

    c50 = runs.get("concurrent_50")
    loc = runs.get("locust")
    growth = runs.get("memory", {}).get("rss_growth_mb", {})
    return (
        (
            f"| {time.strftime('%Y-%m-%d', time.gmtime())} | {machine['nproc']} cores "
            f"| {pair('concurrent_10')} "
            f"| {pair('concurrent_50')}, {c50['throughput_per_s']:.0f}/s "
            if c50
            else "| - "
        )
        + (f"| {pair('locust')}, {loc['error_rate']:.2%} " if loc else "| - ")
        + (f"| {growth.get('worker', 0):+.1f}, {growth.get('gateway', 0):+.1f} |")
    )


def main() -> int:
    runs = load_runs()
    if not runs:
        print(f"no load results in {ARTIFACTS}: run `make load` (or pytest tests/load) first")
        return 1
    machine = machine_info()
    update_doc_section(
        DOCS, MARKS, INTRO, latest_block(runs, machine), HIST_HEADER, history_row(runs, machine)
    )
    print(latest_block(runs, machine))
    print(f"\nwritten to {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
