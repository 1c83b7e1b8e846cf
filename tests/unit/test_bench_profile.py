"""The pure parts of ``framepool bench profile``: py-spy's raw stacks folded into
shares per thread and per function, and the docs section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks import profile_report, profile_worker
from benchmarks.sandbox import BenchError
from framepool.cli import main as cli

RAW = "\n".join(
    [
        "thread (0x7f01): MainThread;<module> (framepool/cli.py:144);"
        "send (/v/lib/python3.11/site-packages/celery/events/dispatcher.py:195) 6",
        "thread (0x7f01): MainThread;<module> (framepool/cli.py:144);"
        "loads (/v/lib/python3.11/site-packages/kombu/utils/json.py:60) 2",
        "thread (0x7f02): ThreadPoolExecutor-0_3;run (workers/frame_pool.py:80);"
        "walk (workers/x.py:1);walk (workers/x.py:2) 1",
        "thread (0x7f03): ThreadPoolExecutor-0_12;run (workers/frame_pool.py:81) 1",
        "",
    ]
)


def test_threads_and_functions_are_named_without_their_numbers() -> None:
    assert profile_report.thread_name("thread (0x7f3a2b): ThreadPoolExecutor-0_3") == (
        "ThreadPoolExecutor-N_N"
    )
    assert profile_report.thread_name("thread (25253): MainThread") == "MainThread"
    assert profile_report.function_name("ModelRunner._run (workers/runner.py:254)") == (
        "ModelRunner._run (workers/runner.py)"
    )
    assert (
        profile_report.function_name(
            "send (/v/lib/python3.11/site-packages/celery/events/dispatcher.py:195)"
        )
        == "send (celery/events/dispatcher.py)"
    )
    assert profile_report.function_name("<module> (<frozen runpy>:198)") == (
        "<module> (<frozen runpy>)"
    )


def test_samples_are_shared_out_per_thread_and_per_function() -> None:
    prof = profile_report.aggregate(RAW, frames=100, rate=200.0, top=10)
    assert prof["samples"] == 10
    assert prof["us_per_frame"] == 500.0  # 10 samples / 200 Hz / 100 frames
    threads = {r["name"]: r["share"] for r in prof["threads"]}
    assert threads == {"MainThread": 0.8, "ThreadPoolExecutor-N_N": 0.2}
    self_ = {r["name"]: r["samples"] for r in prof["self"]}
    assert self_["send (celery/events/dispatcher.py)"] == 6
    assert self_["walk (workers/x.py)"] == 1  # two lines of one function, one row
    incl = {r["name"]: r["samples"] for r in prof["inclusive"]}
    assert incl["walk (workers/x.py)"] == 1  # twice on one stack, counted once
    # under every sample of their thread: the thread's roots, not listed
    assert "<module> (framepool/cli.py)" not in incl and "run (workers/frame_pool.py)" not in incl
    assert incl["send (celery/events/dispatcher.py)"] == 6
    assert prof["self"][0]["us_per_frame"] == 300.0
    assert len(profile_report.aggregate(RAW, 100, 200.0, top=1)["self"]) == 1


def test_bad_input_is_refused_with_what_was_wrong() -> None:
    with pytest.raises(ValueError, match="line 2 of py-spy's output"):
        profile_report.parse_raw("a;b 3\nno count here\n")
    with pytest.raises(ValueError, match="positive"):
        profile_report.aggregate(RAW, frames=0, rate=100.0)
    assert profile_report.aggregate("", 10, 100.0)["samples"] == 0


def _report() -> dict[str, Any]:
    prof = profile_report.aggregate(RAW, 100, 200.0)
    run = {"steady_fps": 300.0, "worker_cpu_ms_per_frame": 3.4}
    return {
        "command": "framepool bench profile --frames 100 --rate 200",
        "date": "2026-11-23 21:40 UTC",
        "machine": {
            "nproc": 2,
            "cpu": "AMD EPYC",
            "platform": "Linux",
            "versions": {
                "python": "3.11.7",
                "torch": "2.13.0",
                "celery": "5.7.0",
                "kombu": "5.7.0",
                "redis-server": "6.2.14",
            },  # fmt: skip
        },
        "config": {
            "model": "noop",
            "frames": 100,
            "rate": 200.0,
            "mode": "gil",
            "max_batch_size": 8,
            "device": "cpu",
            "py_spy": "0.4.3",
        },  # fmt: skip
        "unprofiled": run,
        "profiled": {**run, "steady_fps": 130.0},
        "profile": prof,
        "runtime_s": 40.0,
    }


def test_the_docs_section_is_written_then_replaced(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## other\n\nkept\n")
    report = _report()
    profile_report.update_docs(report, doc)
    report["date"] = "2026-11-23 22:00 UTC"
    profile_report.update_docs(report, doc)
    text = doc.read_text()
    assert "kept" in text and text.count("## Where a worker's time goes") == 1
    assert "Run 2026-11-23 22:00 UTC" in text and "Run 2026-11-23 21:40 UTC" not in text
    assert "| `MainThread` | 80.0 % | 400 |" in text
    assert "| `send (celery/events/dispatcher.py)` | 60.0 % | 300 |" in text
    assert "without the profiler: 300.0 frames/s, worker CPU 3.40 ms per frame" in text
    assert "GIL holders only" in text
    history = [ln for ln in text.splitlines() if ln.startswith("| 2026-11-23")]
    assert len(history) == 2 and "MainThread 80 %" in history[0]


def test_command_line_names_what_differs_from_the_defaults() -> None:
    assert profile_worker.command_line("noop", 4000, 250, "gil") == (
        "framepool bench profile --frames 4000 --rate 250"
    )
    assert profile_worker.command_line("resnet18", 500, 100, "idle") == (
        "framepool bench profile --model resnet18 --frames 500 --rate 100 --idle"
    )


def test_py_spy_missing_is_said_plainly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(profile_worker.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BenchError, match="py-spy is not installed"):
        profile_worker.find_py_spy()
    with pytest.raises(BenchError, match="mode must be one of gil, idle"):
        profile_worker.main(model="noop", frames=64, rate=100, mode="sometimes", top=5,
                            out=tmp_path / "p.json", docs=False, started=0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "no-such-model"),
        (["--rate", "0"], "--rate"),
        (["--frames", "10"], "--frames"),
    ],
)
def test_the_command_refuses_bad_input(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "profile", *args])
    assert result.exit_code == 2
    assert message in result.output
