"""The fault matrix's measured figures into docs/reliability.md.

``tests/integration/test_faults.py`` and ``test_faults_redis.py`` (and the other
tests named below) record each row's figures under tests/artifacts/faults/
(``tests.faults.record``).
``make faults`` runs them and then this module, which rewrites the matrix
between its markers in docs/reliability.md; nothing else in that file changes.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts" / "faults"
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:matrix:begin -->", "<!-- faults:matrix:end -->"

#: row -> (fault, the test that makes it happen)
ROWS: dict[int, tuple[str, str]] = {
    1: ("worker SIGKILL mid-batch", "test_faults.py::test_sigkill_mid_batch_loses_nothing"),
    2: ("one of two workers killed", "test_faults.py::test_one_of_two_workers_killed_the_survivor_finishes"),
    3: ("poison frame", "test_faults.py::test_poison_frame_is_dead_lettered_and_the_others_complete"),
    4: ("batch outlives the visibility timeout", "test_faults.py::test_a_batch_longer_than_the_visibility_timeout_is_written_once"),
    5: ("SIGTERM", "test_faults.py::test_sigterm_gives_unfinished_frames_back_at_once; test_supervisor.py (drain)"),
    6: ("Redis killed and restarted", "test_faults_redis.py::test_redis_killed_and_restarted_loses_no_accepted_frame"),
    7: ("Redis away for 5 s", "test_faults_redis.py::test_redis_paused_while_producing_nothing_hangs"),
    8: ("overload", "test_faults.py::test_overload_refuses_exactly_the_excess_and_bounds_redis"),
    9: ("stale frames", "test_deadlines.py; test_live_frames.py (superseded)"),
    10: ("GPU out of memory", "test_model_runtime.py::test_oom_above_batch_k_still_answers_every_frame"),
    11: ("sticky CUDA error / lost GPU", "test_model_runtime.py::test_sticky_cuda_error_exits_non_zero_and_a_new_worker_finishes_the_frames"),
    12: ("no NVIDIA driver", "unit/test_nvml.py (LibraryNotFound, DriverNotLoaded, GPUIsLost at every call); the whole suite runs without a GPU"),
    13: ("bad input", "test_faults.py::test_bad_frames_from_a_foreign_producer_get_errors_and_the_worker_goes_on; test_gateway.py; test_producer.py"),
    14: ("hostile clients", "test_faults.py::test_a_pickled_message_is_refused_and_nothing_runs; test_monitor.py, test_gateway.py, test_flower.py (401, WS cap)"),
    15: ("long run", "test_faults.py::test_long_run_memory_stays_flat (make faults: 100,000 frames); load/test_concurrent_inference.py::test_memory_stability"),
}  # fmt: skip

_SKIP = {"row", "fault", "at"}


def _figures(entry: dict[str, Any]) -> str:
    parts = []
    for k, v in entry.items():
        if k in _SKIP:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        parts.append(f"{k.replace('_', ' ')}: {v}")
    return "; ".join(parts)


def matrix(folder: Path = ARTIFACTS) -> str:
    lines = ["| # | fault | test | measured (last run) |", "|---|---|---|---|"]
    for row, (fault, test) in ROWS.items():
        path = folder / f"row-{row:02d}.json"
        figures = _figures(json.loads(path.read_text())) if path.exists() else "see the test"
        lines.append(f"| {row} | {fault} | `{test}` | {figures} |")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"Figures from the tests' last run on this machine ({when}).\n\n" + "\n".join(lines)


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        print(f"{DOC} lacks the markers {BEGIN} / {END}")
        return 1
    block = matrix()
    text = re.sub(
        re.escape(BEGIN) + r".*?" + re.escape(END),
        lambda _: f"{BEGIN}\n{block}\n{END}",
        text,
        flags=re.DOTALL,
    )
    DOC.write_text(text, encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
