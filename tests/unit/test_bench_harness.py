"""The benchmark's pure helpers: statistics, the closed loop, the docs update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import pipeline, pipeline_report
from benchmarks.harness import (
    closed_loop,
    median,
    percentile,
    ratio,
    steady_rate,
    update_bench_docs,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 25) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_steady_rate_drops_the_warm_up() -> None:
    # a slow start (one per second) then 100 per second
    ts = [0.0, 1.0, 2.0] + [2.0 + 0.01 * i for i in range(1, 28)]
    assert steady_rate(ts, warmup_frac=0.1) == pytest.approx(100.0)
    assert steady_rate(ts, warmup_frac=0.0) < 100.0
    assert steady_rate(reversed(ts), warmup_frac=0.1) == pytest.approx(100.0)


def test_steady_rate_needs_a_span() -> None:
    with pytest.raises(ValueError):
        steady_rate([1.0], 0.0)
    with pytest.raises(ValueError):
        steady_rate([1.0, 1.0, 1.0], 0.0)
    with pytest.raises(ValueError):
        steady_rate([1.0, 2.0], 1.0)


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) != ratio(1.0, 0.0)  # nan


def test_closed_loop_keeps_frames_outstanding_and_reads_all() -> None:
    outstanding: list[int] = []
    max_out = 0
    submitted: list[int] = []

    def submit(start: int, count: int) -> list[int]:
        nonlocal max_out
        ids = list(range(start, start + count))
        submitted.extend(ids)
        outstanding.extend(ids)
        max_out = max(max_out, len(outstanding))
        return ids

    def read(h: int) -> int:
        outstanding.remove(h)
        return h * 10

    n = 200
    results, wall = closed_loop(n, submit, read)
    assert results == [i * 10 for i in range(n)]
    assert submitted == list(range(n))
    assert max_out <= 2 * pipeline.CHUNK
    assert wall >= 0


def _report() -> dict[str, Any]:
    fig = {"name": "x", "unit": "frames/s", "runs": [1.0], "median": 1.0}
    figs = {
        "a": {**fig, "baseline_median": 2.0, "ratio": 0.5, "goal": "ratio >= 0.9", "met": False},
        "b_solo": {**fig, "baseline_median": 1.0, "ratio": 1.0},
        "b_threads": {**fig, "baseline_median": 1.0, "ratio": 1.0},
        "c_p50": {**fig, "unit": "ms", "median": 4.0},
        "c_p99": {**fig, "unit": "ms", "median": 9.0},
    }
    return {
        "command": "framepool bench pipeline --frames 10 --repeats 1",
        "date": "2030-01-01 00:00 UTC",
        "machine": {
            "nproc": 2,
            "cpu": "Test CPU",
            "versions": {"python": "3", "torch": "2", "celery": "5", "kombu": "5"},
        },
        "figures": figs,
        "runtime_s": 12.0,
    }


def test_update_docs_appends_history_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_report, "latest_block", lambda report: f"latest {report['date']}")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose stays\n", encoding="utf-8")
    pipeline_report.update_docs(_report(), doc)
    pipeline_report.update_docs(_report(), doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nprose stays\n")
    assert text.count("latest 2030-01-01 00:00 UTC") == 1  # replaced, not appended
    assert text.count("| 2030-01-01 00:00 UTC |") == 2  # one history row per run
    assert text.count("| date |") == 1
    assert "1.0 / 2.0 = 0.500x" in text


def test_two_worker_figure_is_a_ratio_against_one_plain_process() -> None:
    def run(fps: float) -> pipeline.Run:
        return pipeline.Run(frames=100, steady_fps=fps, wall_fps=fps, cpu_ms_per_frame={})

    lat = {"added_p50_ms": 4.0, "added_p99_ms": 9.0, "e2e_p50_ms": 6.0, "e2e_p99_ms": 12.0}
    lat["inference_p50_ms"] = 2.0
    res = {"e2e": [run(30)], "loop": [run(33)], "latency": [lat], "model": "m"}
    noop = {
        "framepool": [run(250), run(260), run(255)],
        "framepool_2": [run(330), run(350), run(340)],
        "plain_solo": [run(170), run(160), run(165)],
        "plain_threads": [run(168), run(168), run(168)],
        "plain_latency": [lat],
    }
    figs = pipeline_report.build_figures(res, noop)
    two = figs["b_two"]
    assert two["median"] == 340 and two["baseline_median"] == 165
    assert two["ratio"] == pytest.approx(340 / 165, rel=1e-3) and two["met"] is True
    assert figs["b_solo"]["ratio"] == pytest.approx(255 / 165, rel=1e-3)
    assert figs["b_solo"]["met"] is True  # 1.545 >= 1.5
    report = {**_report(), "figures": {**_report()["figures"], "b_two": two}}
    row = pipeline_report.history_row(report)
    assert "340.0 / 165.0 = 2.061x" in row
    assert row.count("|") == pipeline_report.HISTORY_HEADER.splitlines()[0].count("|")


X_MARKS = ("<!-- x:latest:begin -->", "<!-- x:latest:end -->",
         "<!-- x:history:begin -->", "<!-- x:history:end -->")  # fmt: skip
X_DOC = """``framepool bench x``: the first line, not repeated.

What ``x`` measures, in two
lines.
"""
X_HEADER = "| date | figure |\n|---|---|"


def test_the_intro_is_written_once_and_the_blocks_after(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## other\n\nkept by hand\n")
    update_bench_docs(doc, X_MARKS, "X (`framepool bench x`)", X_DOC, "x", "run one", X_HEADER,
                      "| 1 | 1.0 |")  # fmt: skip
    doc.write_text(doc.read_text().replace("in two\nlines.", "in two\nlines, edited."))
    update_bench_docs(doc, X_MARKS, "X (`framepool bench x`)", X_DOC, "x", "run two", X_HEADER,
                      "| 2 | 2.0 |")  # fmt: skip
    text = doc.read_text()
    assert "kept by hand" in text and text.count("## X (`framepool bench x`)") == 1
    assert "What `x` measures, in two\nlines, edited." in text  # the intro is not rewritten
    assert "the first line" not in text
    assert "### Latest run (x)" in text and "### History (x)" in text
    assert "run two" in text and "run one" not in text
    assert text.index("| 1 | 1.0 |") < text.index("| 2 | 2.0 |")
    assert text.count("| date | figure |") == 1
