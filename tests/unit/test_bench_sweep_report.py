"""``framepool bench sweep``'s report from a JSON fixture: the figures (medians set
against the first point), the saved JSON, tables and docs block with its history,
a partial run keeping the other axes, and the plots (one PNG per axis, linked
from the docs, skipped without matplotlib)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import sweep_plots, sweep_report

PNG = b"\x89PNG\r\n\x1a\n"


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
