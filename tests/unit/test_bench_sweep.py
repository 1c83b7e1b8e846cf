"""``framepool bench sweep``'s pure parts: the camera schedule and its driver, the
figures, the Redis-memory arithmetic, and the report (tables, docs, plots) from a
JSON fixture."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks import sweep_plots, sweep_report
from benchmarks.harness import result_latencies
from benchmarks.sandbox import BenchError
from benchmarks.sweep import QUICK, Plan, make_plan, per_camera_fps
from benchmarks.sweep_cameras import LEAD_S, camera_schedule, camera_stats, drive
from benchmarks.sweep_memory import body_encoding, memory_figures

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ schedule
def test_camera_schedule_is_periodic_per_camera_from_its_own_phase() -> None:
    sched = camera_schedule(cameras=5, fps=4.0, duration_s=3.0, seed=1)
    assert [t for t, _, _ in sched] == sorted(t for t, _, _ in sched)
    assert all(0 <= t < 3.0 for t, _, _ in sched)
    for cam in range(5):
        own = [(t, seq) for t, c, seq in sched if c == cam]
        assert [seq for _, seq in own] == list(range(len(own)))
        assert 0 <= own[0][0] < 0.25  # the phase is within one period
        gaps = [b[0] - a[0] for a, b in zip(own, own[1:], strict=False)]
        assert gaps and all(g == pytest.approx(0.25) for g in gaps)
        assert len(own) in (12, 13)  # 3 s at 4 frames/s from a phase in [0, 0.25)
    phases = {round(min(t for t, c, _ in sched if c == cam), 6) for cam in range(5)}
    assert len(phases) == 5  # unsynchronised


def test_camera_schedule_is_seeded() -> None:
    assert camera_schedule(8, 2.0, 2.0, seed=3) == camera_schedule(8, 2.0, 2.0, seed=3)
    assert camera_schedule(8, 2.0, 2.0, seed=3) != camera_schedule(8, 2.0, 2.0, seed=4)


@pytest.mark.parametrize("args", [(0, 1.0, 1.0), (1, 0.0, 1.0), (1, 1.0, 0.0)])
def test_camera_schedule_rejects_bad_arguments(args: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError):
        camera_schedule(*args)


class FakeClock:
    """Time moves only when the driver sleeps (the reader thread only reads it)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_drive_submits_frames_due_together_in_one_call_and_reads_all() -> None:
    clock = FakeClock()
    groups: list[list[int]] = []
    reader_threads: set[str] = set()

    def submit(indices: list[int]) -> list[str]:
        groups.append(indices)
        return [f"h{i}" for i in indices]

    def get(handle: str, timeout: float) -> dict[str, str]:
        reader_threads.add(threading.current_thread().name)
        return {"handle": handle}

    done, late = drive([0.0, 0.0, 0.0, 0.5, 0.5, 1.25], submit, get, clock, clock.sleep)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    assert [i for i, _, _ in done] == list(range(6))
    assert [r["handle"] for _, r, _ in done] == [f"h{i}" for i in range(6)]
    assert all(ms >= 0 for _, _, ms in done)
    assert late == 0.0  # the fake clock never overshoots
    assert clock.sleeps == pytest.approx([LEAD_S, 0.5, 0.75])
    assert reader_threads == {"sweep-reader"}  # results are read off the schedule's thread


def test_drive_reports_how_late_a_submission_was() -> None:
    clock = FakeClock()

    def submit(indices: list[int]) -> list[int]:
        clock.t += 0.2  # a slow enqueue: the next frame goes out late
        return indices

    done, late = drive([0.0, 0.1], submit, lambda h, t: h, clock, clock.sleep)
    assert [i for i, _, _ in done] == [0, 1]
    assert late == pytest.approx(0.1)


def test_drive_raises_when_a_result_does_not_come() -> None:
    clock = FakeClock()
    with pytest.raises(BenchError, match="no result"):
        drive([0.0, 0.0], lambda idx: idx, lambda h, t: None, clock, clock.sleep)


def test_drive_re_raises_the_readers_error() -> None:
    clock = FakeClock()

    def get(handle: int, timeout: float) -> int:
        raise RuntimeError(f"broken {handle}")

    with pytest.raises(RuntimeError, match="broken 0"):
        drive([0.0, 1.0, 2.0], lambda idx: idx, get, clock, clock.sleep)


# ------------------------------------------------------------------ figures
def _result(enqueued: float, completed: float, *, status: str = "ok", queue: float = 1.0,
            inference: float = 2.0, batch: int = 2) -> SimpleNamespace:  # fmt: skip
    return SimpleNamespace(
        ok=status == "ok",
        status=SimpleNamespace(value=status),
        enqueued_at=enqueued,
        completed_at=completed,
        timings_ms=SimpleNamespace(queue=queue, inference=inference, decode=0.5),
        batch_size=batch,
    )


def test_result_latencies_splits_queue_and_inference_out() -> None:
    results = [_result(0.0, 0.010 * (i + 1), queue=3.0, inference=4.0) for i in range(5)]
    lat = result_latencies(results)
    assert lat["e2e_p50_ms"] == pytest.approx(30.0)
    assert lat["service_p50_ms"] == pytest.approx(27.0)
    assert lat["added_p50_ms"] == pytest.approx(26.0)
    assert lat["e2e_p99_ms"] == pytest.approx(49.6)


def test_camera_stats_keeps_the_window_after_warm_up() -> None:
    schedule = [(0.1, 0, 0), (0.5, 1, 0), (1.0, 0, 1), (1.5, 1, 1), (2.0, 2, 0), (2.5, 0, 2)]
    done = [
        (0, _result(0.0, 9.0), 999.0),  # warm-up: left out, whatever its latency
        (1, _result(0.0, 9.0), 999.0),
        (2, _result(1.0, 1.02), 20.0),
        (3, _result(1.5, 1.53), 30.0),
        (4, _result(2.0, 2.04, status="expired"), 40.0),
        (5, _result(2.5, 2.51), 10.0),
    ]
    x = camera_stats(schedule, done, warmup_s=1.0, max_late_s=0.002)
    assert x["frames"] == 4
    assert x["statuses"] == {"ok": 3, "expired": 1}
    assert x["cameras_seen"] == 3
    assert x["client_p50_ms"] == pytest.approx(20.0)
    assert x["steady_fps"] == pytest.approx(2 / (2.51 - 1.02), abs=0.01)  # rounded to 0.01
    assert x["max_submit_lateness_ms"] == pytest.approx(2.0)


def test_camera_stats_needs_answers() -> None:
    schedule = [(0.0, 0, 0), (1.0, 0, 1)]
    done = [(0, _result(0, 1, status="expired"), 1.0), (1, _result(0, 1, status="error"), 1.0)]
    with pytest.raises(BenchError, match="only 0 frames"):
        camera_stats(schedule, done, 0.0, 0.0)


def test_plans_and_the_cameras_rate() -> None:
    full, quick = make_plan(False), make_plan(True)
    assert full == Plan() and quick == QUICK
    assert full.cameras == (1, 4, 16, 64, 256) and full.batch_caps == (1, 2, 4, 8, 16)
    assert full.workers == (1, 2, 4) and len(full.sizes) == 4
    assert quick.repeats == 1 and quick.window_s < full.window_s
    assert make_plan(True, repeats=3).repeats == 3
    # the load is shared: every point offers the same total
    plan = make_plan(False, load=0.4)
    assert per_camera_fps(plan, 1, 100.0) == pytest.approx(40.0)
    assert per_camera_fps(plan, 16, 100.0) * 16 == pytest.approx(40.0)
    # a fixed per-camera rate: the total grows with the cameras
    assert per_camera_fps(make_plan(False, camera_fps=2.0), 64, 100.0) == 2.0
    with pytest.raises(ValueError):
        make_plan(False, load=0.0)
    with pytest.raises(ValueError):
        make_plan(False, camera_fps=-1.0)


# ------------------------------------------------------------------ redis memory
def test_memory_figures_are_per_frame_and_against_the_jpeg() -> None:
    x = memory_figures(frames=10, jpeg_bytes=3000.0, message_bytes=1200.0,
                       frame_key_bytes=3000.0, stored_bytes=45_000, used_delta=50_000)  # fmt: skip
    assert x["payload_bytes"] == 4200
    assert x["stored_bytes_per_frame"] == 4500
    assert x["used_bytes_per_frame"] == 5000
    assert x["overhead_bytes_per_frame"] == 2000
    assert x["base64_jpeg_bytes"] == 4000
    assert x["used_ratio"] == pytest.approx(5000 / 3000, abs=1e-3)
    assert x["stored_ratio"] == 1.5
    assert x["payload_ratio"] == 1.4
    with pytest.raises(ValueError):
        memory_figures(frames=0, jpeg_bytes=1.0, message_bytes=1, frame_key_bytes=0,
                       stored_bytes=1, used_delta=1)  # fmt: skip


def test_body_encoding_reads_kombus_envelope() -> None:
    msg = json.dumps({"body": "eA==", "properties": {"body_encoding": "base64"}}).encode()
    assert body_encoding(msg) == "base64"
    assert body_encoding(json.dumps({"properties": {}}).encode()) == "none"
    assert body_encoding(b"\x00 not json") == "?"


# ------------------------------------------------------------------ the report
def _closed_run(fps: float, p99: float) -> dict[str, Any]:
    return {"frames": 64, "steady_fps": fps, "mean_batch_size": 7.5, "decode_ms": 1.5,
            "inference_ms": 30.0, "service_p50_ms": p99 / 2, "service_p99_ms": p99,
            "e2e_p50_ms": 900.0, "e2e_p99_ms": 1500.0, "added_p50_ms": 5.0,
            "added_p99_ms": 9.0, "others_cpus": 0.1}  # fmt: skip


def _camera_run(fps: float, p99: float, bad: int = 0) -> dict[str, Any]:
    return {"frames": 100, "statuses": {"ok": 100 - bad, **({"expired": bad} if bad else {})},
            "cameras_seen": 1, "steady_fps": fps, "client_p50_ms": p99 / 3,
            "client_p99_ms": p99, "added_p50_ms": 4.0, "added_p99_ms": p99 / 2,
            "e2e_p50_ms": 10.0, "e2e_p99_ms": p99, "service_p50_ms": 3.0,
            "service_p99_ms": 6.0, "mean_batch_size": 1.5, "max_submit_lateness_ms": 1.0,
            "others_cpus": 0.2}  # fmt: skip


def _axis(points: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "resnet18", "date": "2026-11-22 20:00 UTC", "runtime_s": 10.0,
            "command": "framepool bench sweep --quick", "points": points, **extra}  # fmt: skip


def fixture_report() -> dict[str, Any]:
    mem = {"frames": 16, "jpeg_bytes": 20000, "message_bytes": 1300, "frame_key_bytes": 20000,
           "payload_bytes": 21300, "base64_jpeg_bytes": 26668, "stored_bytes_per_frame": 21800,
           "used_bytes_per_frame": 25000, "overhead_bytes_per_frame": 5000,
           "payload_ratio": 1.065, "stored_ratio": 1.09, "used_ratio": 1.25,
           "claim_check": True, "body_encoding": "base64"}  # fmt: skip
    return {
        "command": "framepool bench sweep --quick",
        "date": "2026-11-22 20:00 UTC",
        "machine": {
            "nproc": 2,
            "cpu": "Test CPU",
            "platform": "Linux",
            "versions": {
                "python": "3.11",
                "torch": "2",
                "celery": "5",
                "kombu": "5",
                "redis-server": "7",
            },
        },  # fmt: skip
        "measured": ["cameras", "frame_size", "workers", "batch_cap", "redis_memory"],
        "errors": {},
        "runtime_s": 99.0,
        "axes": {
            "cameras": _axis(
                [
                    {
                        "cameras": 1,
                        "per_camera_fps": 60.0,
                        "offered_fps": 60.0,
                        "runs": [_camera_run(60.0, 20.0), _camera_run(59.0, 30.0)],
                    },
                    {
                        "cameras": 256,
                        "per_camera_fps": 0.2344,
                        "offered_fps": 60.0,
                        "runs": [_camera_run(48.0, 90.0, bad=3), _camera_run(50.0, 70.0)],
                    },
                ],
                frame="640x480",
                max_batch_size=8,
                capacity_fps=120.0,
                load=0.5,
                camera_fps=None,
                warmup_s=1.0,
                window_s=4.0,
                torch_threads=2,
            ),  # fmt: skip
            "frame_size": _axis(
                [
                    {
                        "width": 320,
                        "height": 240,
                        "jpeg_bytes": 20000,
                        "runs": [_closed_run(40, 200)],
                    },
                    {
                        "width": 1920,
                        "height": 1080,
                        "jpeg_bytes": 440000,
                        "runs": [_closed_run(20, 400)],
                    },
                ],
                frames=64,
                torch_threads=2,
            ),  # fmt: skip
            "workers": _axis(
                [
                    {"workers": 1, "runs": [_closed_run(30, 250)]},
                    {"workers": 2, "runs": [_closed_run(36, 300)]},
                ],
                frames=64,
            ),  # fmt: skip
            "batch_cap": _axis(
                [
                    {"batch_cap": 1, "concurrency": 2, "runs": [_closed_run(20, 60)]},
                    {"batch_cap": 8, "concurrency": 16, "runs": [_closed_run(32, 300)]},
                ],
                frames=64,
            ),  # fmt: skip
            "redis_memory": _axis(
                [
                    {"width": 320, "height": 240, "mode": "claim check", **mem},
                    {
                        "width": 320,
                        "height": 240,
                        "mode": "in message",
                        **{**mem, "used_ratio": 1.55, "claim_check": False},
                    },
                ],
                frames=16,
            ),  # fmt: skip
        },
    }


def test_figures_are_medians_set_against_the_first_point() -> None:
    rep = fixture_report()
    cams = sweep_report.build_figures("cameras", rep["axes"]["cameras"])
    assert [r["label"] for r in cams] == ["1", "256"]
    assert cams[0]["steady_fps"] == 59.5 and cams[0]["fps_rel"] == 1.0
    assert cams[1]["steady_fps"] == 49.0
    assert cams[1]["fps_rel"] == pytest.approx(49.0 / 59.5, abs=1e-3)
    assert cams[1]["p99_rel"] == pytest.approx(80.0 / 25.0, abs=1e-3)  # client p99 medians
    assert cams[1]["kept_up"] == pytest.approx(49.0 / 60.0, abs=1e-3)
    assert cams[1]["not_ok"] == 3 and cams[0]["not_ok"] == 0
    workers = sweep_report.build_figures("workers", rep["axes"]["workers"])
    assert workers[1]["fps_rel"] == 1.2 and workers[1]["efficiency"] == 0.6
    sizes = sweep_report.build_figures("frame_size", rep["axes"]["frame_size"])
    assert [r["label"] for r in sizes] == ["320x240", "1920x1080"]
    assert sizes[1]["p99_rel"] == 2.0  # service p99 400 vs 200


@pytest.fixture()
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plots are tested on their own (rendering takes seconds)."""
    monkeypatch.setattr(sweep_plots, "render", lambda report, out_dir: ({}, None))


@pytest.mark.usefixtures("no_plots")
def test_save_writes_json_tables_and_the_docs_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept as is\n", encoding="utf-8")
    out = tmp_path / "results" / "sweep.json"
    assert sweep_report.save(fixture_report(), out, True, docs, tmp_path / "img") == 0
    saved = json.loads(out.read_text())
    assert set(saved["axes"]) == set(sweep_report.ORDER)
    text = docs.read_text()
    assert "kept as is" in text
    assert text.count(sweep_report.MARKS[0]) == 1
    block = text.split(sweep_report.MARKS[0])[1].split(sweep_report.MARKS[1])[0]
    for title in sweep_report.TITLES.values():
        assert f"#### {title}" in block
    assert "| 256 | 0.234 | 60.0 | 49.0 | 0.82x |" in block
    assert "| 320x240, in message |" in block
    history = text.split(sweep_report.MARKS[2])[1].split(sweep_report.MARKS[3])[0]
    assert history.count("| 2026-11-22 20:00 UTC |") == 1
    assert "1: 25.0 / 256: 80.0" in history  # cameras: client p99 at the ends
    # a second run replaces the block and adds a history row
    sweep_report.save(fixture_report(), out, True, docs, tmp_path / "img")
    text = docs.read_text()
    assert text.count(sweep_report.MARKS[0]) == 1
    history = text.split(sweep_report.MARKS[2])[1].split(sweep_report.MARKS[3])[0]
    assert history.count("| 2026-11-22 20:00 UTC |") == 2


@pytest.mark.usefixtures("no_plots")
def test_a_run_of_some_axes_keeps_the_others_from_the_last_json(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    sweep_report.save(fixture_report(), out, False, tmp_path / "b.md", tmp_path / "img")
    partial = fixture_report()
    partial["axes"] = {"redis_memory": partial["axes"]["redis_memory"]}
    partial["axes"]["redis_memory"]["date"] = "2026-11-23 08:00 UTC"
    partial["measured"] = ["redis_memory"]
    sweep_report.save(partial, out, False, tmp_path / "b.md", tmp_path / "img")
    saved = json.loads(out.read_text())
    assert list(saved["axes"]) == list(sweep_report.ORDER)
    assert saved["axes"]["redis_memory"]["date"] == "2026-11-23 08:00 UTC"
    assert saved["axes"]["cameras"]["date"] == "2026-11-22 20:00 UTC"
    assert saved["measured"] == ["redis_memory"]
    assert "kept from earlier runs: cameras, frame_size, workers, batch_cap" in (
        sweep_report.latest_block(saved)
    )
    assert not (tmp_path / "b.md").exists()  # --no-docs


def test_plots_one_png_per_axis(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written, skipped = sweep_plots.render(fixture_report(), tmp_path)
    assert skipped is None
    assert set(written) == set(sweep_report.ORDER)
    for axis, path in written.items():
        assert path.name == sweep_plots.FILES[axis]
        assert path.read_bytes()[:8] == PNG


def test_the_docs_link_the_plots_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def render(report: dict[str, Any], out_dir: Path) -> tuple[dict[str, Path], None]:
        out_dir.mkdir(parents=True)
        (out_dir / "sweep-cameras.png").write_bytes(PNG)
        return {"cameras": out_dir / "sweep-cameras.png"}, None

    monkeypatch.setattr(sweep_plots, "render", render)
    docs = tmp_path / "docs" / "benchmarks.md"
    sweep_report.save(fixture_report(), tmp_path / "sweep.json", True, docs, docs.parent / "img")
    text = docs.read_text()
    assert "![Cameras](img/sweep-cameras.png)" in text
    assert "![Workers" not in text  # only what was drawn is linked
    assert json.loads((tmp_path / "sweep.json").read_text())["plots"] == {
        "cameras": "img/sweep-cameras.png"
    }


def test_without_matplotlib_plots_are_skipped_and_tables_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written, skipped = sweep_plots.render(fixture_report(), tmp_path / "img")
    assert written == {} and skipped == sweep_plots.MISSING
    docs = tmp_path / "benchmarks.md"
    sweep_report.save(fixture_report(), tmp_path / "sweep.json", True, docs, tmp_path / "img")
    text = docs.read_text()
    assert "plots skipped: matplotlib is not installed" in text
    assert "#### Cameras" in text and "![" not in text
    assert not (tmp_path / "img").exists()


def test_cli_refuses_unknown_axes_and_two_camera_rates() -> None:
    from framepool.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["bench", "sweep", "--axes", "cameras,gpus"])
    assert res.exit_code == 2 and "--axes takes some of" in res.output
    res = runner.invoke(main, ["bench", "sweep", "--load", "0.5", "--camera-fps", "2"])
    assert res.exit_code == 2 and "give one" in res.output
