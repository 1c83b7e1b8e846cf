"""``benchmarks.event_flush`` against a real Redis: a few flushes timed and printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_few_flushes_are_timed() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.event_flush", "--flushes", "20", "--frames-per-flush", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = re.search(
        r"flush of 6 events: median (\d+) µs, p90 (\d+) µs; (\d+) µs per frame", proc.stdout
    )
    assert m, proc.stdout
    median, p90, per_frame = map(int, m.groups())
    assert 0 < median <= p90 and abs(per_frame - median / 2) <= 1


def test_bad_arguments_are_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.event_flush", "--flushes", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2 and "--flushes" in proc.stderr
