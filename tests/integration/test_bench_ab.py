"""``framepool bench ab`` for real: side A from a git worktree of HEAD, side B from
this checkout with a setting changed, one pair on a handful of frames of ``noop``
(the per-frame path without a model's cost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [ln for ln in out.splitlines() if ln.startswith("worktree ")]


def test_one_pair_from_a_worktree_and_this_checkout(tmp_path: Path) -> None:
    before = _worktrees()
    out = tmp_path / "ab.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "ab", "--base", "HEAD",
         "--b-env", "CPU_WAIT_POLICY=passive", "--model", "noop", "--pairs", "1", "--frames", "16",
         "--latency-frames", "16", "--fps", "4", "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["sides"]["a"].startswith("HEAD (")
    assert report["sides"]["b"].endswith("CPU_WAIT_POLICY=passive")
    (pair,) = report["pairs"]
    assert pair["order"] == "ab"
    assert Path(pair["b"]["cwd"]) == ROOT  # B runs this checkout's code ...
    assert "framepool-ab-" in pair["a"]["cwd"]  # ... A a worktree's, removed afterwards
    assert not Path(pair["a"]["cwd"]).exists() and _worktrees() == before
    for side in ("a", "b"):
        assert pair[side]["open"]["frames"] == 16 and pair[side]["closed"]["frames"] == 16
        assert pair[side]["closed"]["steady_fps"] > 0
    figs = {f["metric"]: f for f in report["figures"]}
    thr = figs["closed-loop throughput"]
    assert thr["ratio_median"] == round(
        pair["b"]["closed"]["steady_fps"] / pair["a"]["closed"]["steady_fps"], 3
    )
    assert report["config"]["open_fps"] == 4 and report["config"]["calibration_fps"] is None
    assert report["config"]["model"] == "noop" and "--model noop" in report["command"]
    assert "B/A, median of pairs" in proc.stdout
