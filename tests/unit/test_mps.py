"""CUDA_MPS: when framepool starts an MPS daemon, and how it starts and stops one.

The control binary here is a stand-in script on PATH (no GPU on CI) that keeps a
log of its calls and the pipe directory it was given; on a GPU host
``tests/gpu`` and ``bench gpu`` run the real one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from framepool.errors import BadInput
from workers import mps
from workers.mps import MpsDaemon, shared_gpus, start_mps

FAKE = """#!/bin/sh
# a stand-in nvidia-cuda-mps-control: -d starts (once per pipe dir), stdin quit stops
log="$CUDA_MPS_PIPE_DIRECTORY/../calls"
if [ "$1" = "-d" ]; then
    echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$log"
    if [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ]; then
        echo "An instance of this daemon is already running"; exit 1
    fi
    [ -z "$FAKE_MPS_FAIL" ] || { echo "$FAKE_MPS_FAIL" >&2; exit 1; }
    touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
read cmd
echo "$cmd" >> "$log"
rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
"""


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / mps.CONTROL
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_MPS_FAIL", raising=False)
    return exe


def test_shared_gpus_are_those_named_twice() -> None:
    assert shared_gpus(["cuda:0", "cuda:1", "cuda:0", "cpu", "cpu"]) == ["cuda:0"]
    assert shared_gpus(["cuda:0", "cuda:1"]) == []
    assert shared_gpus(["cpu", "cpu"]) == []


def test_auto_starts_a_daemon_of_our_own_for_a_shared_gpu_and_stops_it(
    control: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data" / "mps"
    daemon, note = start_mps("auto", ["cuda:0", "cuda:0", "cuda:1"], root)
    assert daemon is not None and daemon.running
    assert note.startswith("on for cuda:0")
    pipe = root.resolve() / "pipe"
    assert daemon.env == {
        "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
        "CUDA_MPS_LOG_DIRECTORY": str(root.resolve() / "log"),
    }
    assert (pipe / "control").exists()
    daemon.stop()
    assert not (pipe / "control").exists()
    calls = (root / "calls").read_text().splitlines()
    assert calls == [f"start {pipe} {root.resolve() / 'log'}", "quit"]
    daemon.stop()  # a second stop does nothing
    assert (root / "calls").read_text().splitlines() == calls


def test_auto_leaves_mps_off_without_a_shared_gpu_or_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert start_mps("auto", ["cuda:0", "cuda:1"], tmp_path) == (
        None,
        "off (no GPU has two workers)",
    )
    assert start_mps("off", ["cuda:0", "cuda:0"], tmp_path) == (None, "off (CUDA_MPS=off)")
    monkeypatch.setenv("PATH", str(tmp_path))  # no control binary anywhere
    daemon, note = start_mps("auto", ["cuda:0", "cuda:0"], tmp_path)
    assert daemon is None and f"{mps.CONTROL} not on PATH" in note and "cuda:0" in note
    with pytest.raises(BadInput, match="not on PATH"):
        start_mps("on", ["cuda:0", "cuda:0"], tmp_path)
    assert start_mps("on", ["cpu", "cpu"], tmp_path) == (None, "off (no worker on a GPU)")
    with pytest.raises(BadInput, match="CUDA_MPS must be one of"):
        start_mps("yes", ["cuda:0"], tmp_path)


def test_a_daemon_that_does_not_start(
    control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MPS_FAIL", "cannot find any MPS-capable device")
    daemon, note = start_mps("auto", ["cuda:0", "cuda:0"], tmp_path / "a")
    assert daemon is None
    assert note.startswith("off (the daemon did not start") and "MPS-capable" in note
    with pytest.raises(BadInput, match="did not start: .*MPS-capable"):
        start_mps("on", ["cuda:0", "cuda:0"], tmp_path / "b")


def test_an_earlier_runs_daemon_on_our_pipe_dir_is_reused(control: Path, tmp_path: Path) -> None:
    first = MpsDaemon(tmp_path, str(control)).start()
    again = MpsDaemon(tmp_path, str(control)).start()  # "already running": ours to use
    assert again.running
    again.stop()
    assert not (tmp_path / "pipe" / "control").exists()
    first.running = False  # stopped through `again`


def test_settings_take_cuda_mps_and_redis_io_threads_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from framepool.settings import Settings

    assert (Settings().cuda_mps, Settings().redis_io_threads) == ("auto", 1)
    monkeypatch.setenv("CUDA_MPS", "off")
    monkeypatch.setenv("REDIS_IO_THREADS", "4")
    assert (Settings().cuda_mps, Settings().redis_io_threads) == ("off", 4)
    monkeypatch.setenv("CUDA_MPS", "maybe")
    with pytest.raises(ValidationError, match="cuda_mps"):
        Settings()
    monkeypatch.setenv("CUDA_MPS", "on")
    monkeypatch.setenv("REDIS_IO_THREADS", "0")
    with pytest.raises(ValidationError, match="redis_io_threads"):
        Settings()


def test_up_with_cuda_mps_on_and_no_daemon_stops_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framepool.settings import Settings
    from framepool.stack import Stack
    from workers.placement import WorkerSpec

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control
    settings = Settings(_env_file=None, cuda_mps="on", data_dir=tmp_path / "data",
                        redis_url="redis://127.0.0.1:1/0")  # fmt: skip
    stack = Stack(settings, gpus="none", workers_per_gpu=1, models=["noop"], flower=False)
    stack.specs = [WorkerSpec(f"gpu0-{k}", "cuda:0", ["noop"]) for k in (1, 2)]
    with pytest.raises(BadInput, match="CUDA_MPS=on, but nvidia-cuda-mps-control"), stack:
        pass
    assert stack.embedded is None and stack.supervisor is None  # no Redis, no worker
    assert not (tmp_path / "data" / "redis").exists()


def test_a_worker_says_whether_its_cuda_work_goes_through_mps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's heartbeat (``mps``), then the monitor's /api/v1/workers and
    /api/v1/gpu/status answers and ``framepool status``'s workers table."""
    import json

    import fakeredis
    from rich.console import Console

    from framepool import keys
    from monitoring import responses
    from monitoring.cluster import ClusterReader
    from monitoring.status import render_status
    from tests.unit.test_cluster import Clock, heartbeat, settings
    from workers.snapshot import mps_pipe

    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    assert mps_pipe("cuda:0") is None
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/data/mps/pipe")
    assert mps_pipe("cuda:0") == "/data/mps/pipe"
    assert mps_pipe("cpu") is None  # a CPU worker goes through no daemon

    client = fakeredis.FakeRedis()
    for name, pipe in (("gpu0-1@h", "/data/mps/pipe"), ("gpu1-1@h", None)):
        hb = {**heartbeat(name, "h", {}), "device": "cuda:0", "mps": pipe}
        client.set(keys.worker_heartbeat(name), json.dumps(hb))
        client.sadd(keys.WORKERS, name)
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    listed = {w["name"]: w["mps"] for w in responses.workers_list(snap)["workers"]}
    assert listed == {"gpu0-1@h": "/data/mps/pipe", "gpu1-1@h": None}
    status = {w["worker"]: w["mps"] for w in responses.gpu_status(snap, 1.0)["workers"]}
    assert status == {"gpu0-1@h": True, "gpu1-1@h": False}
    console = Console(width=200, record=True)
    console.print(render_status(snap, []))
    rows = [line for line in console.export_text().splitlines() if "@h" in line]
    assert any("gpu0-1@h" in r and "cuda:0 (MPS)" in r for r in rows)
    assert any("gpu1-1@h" in r and "cuda:0 (MPS)" not in r for r in rows)
