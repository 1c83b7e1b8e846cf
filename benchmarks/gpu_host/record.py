"""Back home: record reports brought back from the GPU host as a local run would.

``run.sh`` on the host runs ``framepool bench gpu --no-docs`` (and ``bench models``,
``bench peers --no-docs``), so its copy of docs/benchmarks.md is left behind there;
this takes the JSON it returned, writes it where a local run writes it
(``benchmarks/results/``), prints the summary and rewrites the bench's section of
docs/benchmarks.md, with the benches' own :func:`benchmarks.harness.save_report`
and ``update_docs``::

    python -m benchmarks.gpu_host.record gpu-out/gpu.json [gpu-out/models.json] [gpu-out/peers.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import gpu_report, models_report, peers_report
from benchmarks.harness import ROOT, save_report

Report = dict[str, Any]


class Kind(NamedTuple):
    out: str  # where a local run writes its JSON, under --results
    docs: Path
    update_docs: Callable[[Report], None]
    show: Callable[[Report], None]


#: a report's command (its first three words) -> how that bench records it
KINDS = {
    "framepool bench gpu": Kind(
        "gpu.json", gpu_report.DOCS, gpu_report.update_docs, gpu_report.print_summary
    ),
    "framepool bench models": Kind(
        "models.json", models_report.DOCS, models_report.update_docs, models_report.print_summary
    ),
    "framepool bench peers": Kind(
        "peers.json", peers_report.DOCS, peers_report.update_docs, peers_report.print_summary
    ),
}


def kind_of(report: Report) -> Kind:
    command = " ".join(str(report.get("command", "")).split()[:3])
    if command not in KINDS:
        raise ValueError(f"not a report of {' or '.join(KINDS)}: command {command!r}")
    return KINDS[command]


def record(path: Path, results: Path, docs: bool = True) -> int:
    report: Report = json.loads(path.read_text(encoding="utf-8"))
    kind = kind_of(report)
    print(f"{path}: {report['command']} ({report.get('date', '?')})")
    return save_report(report, results / kind.out, kind.docs, kind.update_docs, kind.show,
                       write_docs=docs)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="gpu.json / models.json / peers.json")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where the JSON is kept (default: %(default)s)")  # fmt: skip
    parser.add_argument("--no-docs", action="store_true", help="print only; docs untouched")
    args = parser.parse_args(argv)
    try:
        return max(record(p, args.results, docs=not args.no_docs) for p in args.reports)
    except (OSError, ValueError, KeyError) as exc:
        print(f"record: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
