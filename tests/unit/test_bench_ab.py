"""The pure parts of ``framepool bench ab``: the variants' environments, the order of
the pairs, the B/A figures and the docs section."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks import ab, ab_report
from benchmarks.sandbox import BenchError
from framepool.cli import main as cli


def test_env_items_parse_and_bad_ones_are_named() -> None:
    assert ab.parse_env(["CPU_WAIT_POLICY=passive", "X=a=b", "EMPTY="]) == {
        "CPU_WAIT_POLICY": "passive",
        "X": "a=b",
        "EMPTY": "",
    }
    for bad in ("NOEQUALS", "=x", "1X=2", "A B=1"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            ab.parse_env([bad])


def test_the_side_that_goes_first_alternates() -> None:
    assert [ab.order(p) for p in range(4)] == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]


def _run(fps: float, p99: float, cpu: float) -> dict[str, Any]:
    return {
        "closed": {"steady_fps": fps, "cpu_ms_per_frame": {"server": cpu}},
        "open": {
            "e2e_p50_ms": p99 / 2,
            "e2e_p99_ms": p99,
            "model_idle_p50_ms": 3.0,
            "model_idle_p99_ms": 9.0,
            "inference_p50_ms": 14.0,
            "mean_batch_size": 1.5,
            "cpu_ms_per_frame": {"server": cpu + 1},
        },
    }


PAIRS = [
    {"a": _run(80.0, 100.0, 20.0), "b": _run(88.0, 90.0, 19.0)},  # B ahead
    {"a": _run(80.0, 100.0, 20.0), "b": _run(72.0, 120.0, 21.0)},  # B behind
    {"a": _run(80.0, 100.0, 20.0), "b": _run(84.0, 80.0, 20.0)},  # B ahead; CPU a tie
]


def test_figures_are_b_over_a_within_each_pair() -> None:
    figs = {f["metric"]: f for f in ab_report.build_figures(PAIRS)}
    thr = figs["closed-loop throughput"]
    assert thr["ratio_median"] == 1.05 and (thr["ratio_min"], thr["ratio_max"]) == (0.9, 1.1)
    assert thr["b_ahead"] == 2 and thr["a_median"] == 80.0 and thr["b_median"] == 84.0
    p99 = figs["open-loop p99"]
    assert p99["ratio_median"] == 0.9 and p99["b_ahead"] == 2  # lower is better
    cpu = figs["worker + Redis CPU per frame, closed"]
    assert cpu["b_ahead"] == 1  # a tie counts for neither side
    assert figs["mean batch (open loop)"]["b_ahead"] is None  # neither better nor worse
    assert {f["pairs"] for f in figs.values()} == {3}
    with pytest.raises(ValueError):
        ab_report.build_figures([])


def _report() -> dict[str, Any]:
    return {
        "command": "framepool bench ab --b-env CPU_WAIT_POLICY=passive --pairs 3",
        "date": "2026-11-23 19:00 UTC",
        "runtime_s": 300.0,
        "machine": {
            "nproc": 2,
            "cpu": "AMD EPYC",
            "platform": "Linux",
            "versions": {"python": "3.11.7", "torch": "2.13.0", "celery": "5", "redis-server": "7"},
        },
        "sides": {"a": "this checkout (abc1234)", "b": "this checkout, CPU_WAIT_POLICY=passive"},
        "config": {
            "model": "resnet18",
            "device": "cpu",
            "torch_threads": 2,
            "max_batch_size": 8,
            "latency_frames": 300,
            "frames": 300,
            "cameras": 4,
            "pairs": 3,
            "load": 0.5,
            "calibration_fps": 86.0,
            "open_fps": 43.0,
        },
        "figures": ab_report.build_figures(PAIRS),
    }


def test_the_docs_section_is_written_then_replaced(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nother sections\n")
    report = _report()
    ab_report.update_docs(report, doc)
    text = doc.read_text()
    assert "## A change to the worker, in pairs (`framepool bench ab`)" in text
    assert "- **B**: this checkout, CPU_WAIT_POLICY=passive" in text
    assert (
        "| open-loop p99 (ms, lower is better) | 100 | 90 | 0.900x | 0.800-1.200 | 2 of 3 |" in text
    )
    assert "at 43 frames/s (0.5 of the tight loop's 86)" in text
    assert "| 1.050x | 0.900x / 0.900x | 2 of 3 | 300 s |" in text
    later = copy.deepcopy(report)
    later["date"] = "2026-11-23 20:00 UTC"
    ab_report.update_docs(later, doc)
    text = doc.read_text()
    assert text.count("### Latest run (ab)") == 1 and "other sections" in text
    assert text.count("| 2026-11-23 ") == 2  # one history row per run
    assert "Run 2026-11-23 20:00 UTC" in text and "Run 2026-11-23 19:00 UTC" not in text


def test_command_line_names_what_differs() -> None:
    plan = ab.Plan(300, 200, 4, 0.5, 4, None, 2, "cpu")
    assert ab.command_line({}, {"CPU_WAIT_POLICY": "passive"}, None, plan) == (
        "framepool bench ab --b-env CPU_WAIT_POLICY=passive --pairs 4 --frames 300 "
        "--latency-frames 200 --load 0.5 --cameras 4"
    )
    fixed = ab.Plan(300, 200, 4, 0.5, 4, 20.0, 2, "cpu")
    assert "--base HEAD~1" in ab.command_line({}, {}, "HEAD~1", fixed)
    assert "--fps 20 " in ab.command_line({}, {}, "HEAD~1", fixed)
    assert "--model" not in ab.command_line({}, {}, "HEAD~1", fixed)
    noop = ab.Plan(300, 200, 4, 0.5, 4, 200.0, 2, "cpu", "noop")
    assert ab.command_line({}, {}, "HEAD", noop).startswith(
        "framepool bench ab --model noop --base HEAD"
    )


def test_a_ref_that_is_not_a_commit_is_refused() -> None:
    with pytest.raises(BenchError, match="is not a commit"):
        ab.resolve_ref("no-such-ref-anywhere")
    assert len(ab.resolve_ref("HEAD")) == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "A and B would be the same worker"),
        (["--a-env", "X=1", "--b-env", "X=1"], "A and B would be the same worker"),
        (["--b-env", "oops"], "expected KEY=VALUE"),
        (["--base", "no-such-ref-anywhere"], "is not a commit"),
        (["--model", "noop", "--b-env", "X=1"], "give --fps for --model noop"),
        (["--model", "no-such-model", "--b-env", "X=1", "--fps", "5"], "no-such-model"),
    ],
)
def test_the_command_refuses_what_it_cannot_compare(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "ab", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_side_with_several_workers_shares_out_the_threads() -> None:
    two = ab.Side({"X": "1"}, None, "this checkout", workers=2)
    assert two.threads(2) == 1 and two.threads(1) == 1 and ab.Side().threads(2) == 2
    assert two.describe() == "this checkout, 2 worker processes, X=1"
    plan = ab.Plan(300, 200, 4, 0.5, 4, None, 2, "cpu")
    assert "--b-workers 2 --pairs" in ab.command_line({}, {}, None, plan, (1, 2))
    assert "-workers" not in ab.command_line({}, {"X": "1"}, None, plan)
    result = CliRunner().invoke(cli, ["bench", "ab", "--a-workers", "2", "--b-workers", "2"])
    assert result.exit_code == 2 and "the same workers" in result.output
