"""The ``framepool`` command line as a user runs it: exit codes and messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from framepool import codec
from framepool.redis_server import free_port, ping
from producer.sources.synthetic import SyntheticCamera
from tests.services import run_cli

ROOT = Path(__file__).resolve().parents[2]


cli = run_cli


@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "frame.jpg"
    path.write_bytes(codec.encode_jpeg(SyntheticCamera("f", 640, 480, seed=3).frame(7).image))
    return path


def test_help_lists_the_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("worker", "submit", "results", "models", "up", "demo", "bench", "flower"):
        assert command in out.stdout


def test_models_lists_the_zoo() -> None:
    out = cli("models", env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for model_id in ("shape_detector", "resnet18", "resnet50"):
        assert model_id in out.stdout


def test_unreachable_redis_is_a_clear_error(image_file: Path) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    out = cli("submit", "--model", "shape_detector", str(image_file), env=env)
    assert out.returncode == 3 and "Redis unreachable" in out.stderr
    out = cli("worker", "--device", "cpu", "--models", "shape_detector", env=env)
    assert out.returncode == 3 and "Redis unreachable" in out.stderr


def test_bad_input_exits_2_with_a_message(redis_url: str, image_file: Path, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url}
    out = cli("submit", "--model", "nope", str(image_file), env=env)
    assert out.returncode == 2 and "unknown model 'nope'" in out.stderr
    out = cli("submit", "--model", "shape_detector", str(tmp_path / "missing.jpg"), env=env)
    assert out.returncode == 2 and "cannot read" in out.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    out = cli("submit", "--model", "shape_detector", str(text), env=env)
    assert out.returncode == 2 and "not a JPEG or PNG" in out.stderr
    out = cli("worker", "--models", "nope", env=env)
    assert out.returncode == 2 and "unknown model 'nope'" in out.stderr
    out = cli("worker", "--device", "gpu7", "--models", "shape_detector", env=env)
    assert out.returncode == 2 and "cpu or cuda:N" in out.stderr
    out = cli("worker", "--models", "shape_detector", env={**env, "MAX_BATCH_SIZE": "0"})
    assert out.returncode == 2 and "max_batch_size" in out.stderr


def test_submit_wait_and_results(redis_url: str, image_file: Path, start_worker) -> None:
    start_worker(["shape_detector"])
    env = {"REDIS_URL": redis_url}
    out = cli(
        "submit",
        "--model",
        "shape_detector",
        "--camera",
        "door",
        "--wait",
        str(image_file),
        str(image_file),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["seq"] for r in results] == [0, 1]
    assert all(r["status"] == "ok" and r["camera_id"] == "door" for r in results)
    truth = SyntheticCamera("f", 640, 480, seed=3).frame(7).objects
    assert {d["label"] for d in results[0]["outputs"]["detections"]} == {t.label for t in truth}
    out = cli("results", "--camera", "door", env=env)
    assert out.returncode == 0
    assert [json.loads(line)["job_id"] for line in out.stdout.splitlines()] == [
        r["job_id"] for r in results
    ]


def test_demo_runs_without_a_gpu_and_leaves_nothing_running(tmp_path: Path) -> None:
    port = free_port()
    monitor_port = free_port()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "DATA_DIR": str(tmp_path / "fp"),
        "COLUMNS": "200",
        "MONITOR_PORT": str(monitor_port),
        "SERVER_PORT": str(free_port()),
        "FLOWER_PORT": str(flower_port := free_port()),
        "FLOWER_BASIC_AUTH": "",  # generated for the run and printed
    }
    out = cli(
        "demo",
        "--duration",
        "20",
        "--cameras",
        "2",
        "--fps",
        "5",
        "--gpus",
        "none",
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = re.search(r"sent (\d+) frames, (\d+) results \((.*)\)", out.stdout)
    assert summary, out.stdout[-2000:]
    sent, results = int(summary.group(1)), int(summary.group(2))
    assert sent > 50 and results > 50 and "ok=" in summary.group(3)
    assert "(embedded)" in out.stdout and "cpu-1@" in out.stdout
    # the embedded Redis's generated password, for the SDK and CLI in another shell
    exported = re.search(r"export REDIS_URL=redis://:\S+@127\.0\.0\.1:(\d+)/0", out.stdout)
    assert exported and int(exported.group(1)) == port, out.stdout[-2000:]
    assert f"http://127.0.0.1:{monitor_port}/?token=" in out.stdout
    monitor_log = (tmp_path / "fp" / "logs" / "monitor.log").read_text()
    assert "monitor_started" in monitor_log
    assert "/inference" in out.stdout and (tmp_path / "fp" / "logs" / "gateway.log").exists()
    assert f"flower   http://127.0.0.1:{flower_port}/  user admin  password " in out.stdout
    assert "Visit me at" in (tmp_path / "fp" / "logs" / "flower.log").read_text()
    with pytest.raises(httpx.ConnectError):  # the monitor was stopped too
        httpx.get(f"http://127.0.0.1:{monitor_port}/ready", timeout=2)
    assert not ping(f"redis://127.0.0.1:{port}/0")  # embedded Redis stopped
    assert (tmp_path / "fp" / "redis" / "appendonlydir").exists() or any(
        (tmp_path / "fp" / "redis").glob("appendonly*")
    )
