"""``framepool ingest`` end to end, and a live stream that goes away and comes back.

- A real H.264 file (MPEG-4 without libx264) of the synthetic scene and an
  unpaced synthetic camera, ingested by the real CLI at 5 fps into a real
  worker: one result per sampled frame, the frames chosen by timestamp, and
  boxes that match the ground truth of *that* frame.
- Bad input: a clear message and exit code 2.
- An MPEG-TS server over TCP stops and starts again on the same port: the
  source logs the drop and the reconnect, seq keeps rising, nothing crashes.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import redis
from structlog.testing import capture_logs

from framepool import keys
from framepool.errors import BadInput
from framepool.redis_server import free_port
from framepool.settings import Settings
from models.zoo.shape_detector.evaluate import match
from producer.sources.base import SourceFrame
from producer.sources.synthetic import SyntheticCamera
from producer.sources.video import VideoSource
from tests.services import run_cli
from tests.video import encode_video, start_stream_server

ROOT = Path(__file__).resolve().parents[2]
MODEL = "shape_detector"


def ingest_cli(
    args: list[str], redis_url: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {"REDIS_URL": redis_url, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    return run_cli(*args, env=env, timeout=timeout)


def wait_for_results(client: redis.Redis, camera_id: str, n: int, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    while True:
        entries = client.xrange(keys.result_stream(camera_id))
        if len(entries) >= n or time.monotonic() > deadline:
            return [json.loads(fields[b"result"]) for _, fields in entries]
        time.sleep(0.2)


def test_cli_ingests_a_video_file_and_a_synthetic_camera_at_5_fps(
    settings: Settings, start_worker, tmp_path: Path
) -> None:
    start_worker([MODEL])
    video_cam = SyntheticCamera("vid", 320, 240, fps=25, seed=11)
    video = encode_video(tmp_path / "vid.mp4", video_cam, 75)  # 3 s at 25 fps
    synth_cam = SyntheticCamera("syn", 320, 240, fps=10, seed=12)
    synth = "synthetic?width=320&height=240&fps=10&seed=12&realtime=0"  # 7.5 s of frames, unpaced

    done = ingest_cli(
        ["ingest", "--model", MODEL, "--fps", "5", "--count", "75",
         "--camera", "vid", "--source", str(video), "--camera", "syn", "--source", synth],
        settings.redis_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    # sampled by timestamp: every 5th frame at 25 fps, every 2nd at 10 fps
    expected = {"vid": list(range(0, 75, 5)), "syn": list(range(0, 75, 2))}
    assert summary["model_id"] == MODEL
    assert summary["read"] == 150 and summary["dropped"] == {}
    assert summary["sent"] == 15 + 38 and summary["skipped"] == 150 - 53
    for cam, seqs in expected.items():
        c = summary["cameras"][cam]
        assert (c["read"], c["sent"], c["error"]) == (75, len(seqs), None)
        assert c["read"] == c["skipped"] + c["sent"]
    assert summary["cameras"]["vid"]["live"] is False

    client = redis.Redis.from_url(settings.redis_url)
    truth = {"vid": video_cam, "syn": synth_cam}
    tp = fp = fn = 0
    for cam, seqs in expected.items():
        results = wait_for_results(client, cam, len(seqs))
        # one result per sampled frame, each for its own frame
        assert sorted(r["seq"] for r in results) == seqs
        assert {r["status"] for r in results} == {"ok"}
        assert {r["model_id"] for r in results} == {MODEL}
        # captured_at follows the stream's timestamps: 0.2 s apart at 5 fps
        ats = [r["captured_at"] for r in sorted(results, key=lambda r: r["seq"])]
        gaps = [b - a for a, b in zip(ats, ats[1:], strict=False)]
        assert all(abs(g - 0.2) < 1e-3 for g in gaps), gaps
        for r in results:
            t, f, n = match(r["outputs"]["detections"], truth[cam].frame(r["seq"]).objects)
            tp, fp, fn = tp + t, fp + f, fn + n
    assert tp / (tp + fn) >= 0.9, f"recall {tp / (tp + fn):.3f}"
    assert tp / (tp + fp) >= 0.9, f"precision {tp / (tp + fp):.3f}"


def test_cli_bad_input_exits_2_with_a_clear_message(settings: Settings, tmp_path: Path) -> None:
    url = settings.redis_url
    synth = "synthetic?realtime=0&width=64&height=48"

    unknown = ingest_cli(["ingest", "--model", "nope", "--camera", "c", "--source", synth,
                       "--count", "3"], url)  # fmt: skip
    assert unknown.returncode == 2
    assert "unknown model 'nope'" in unknown.stderr and "shape_detector" in unknown.stderr
    assert "item 0" not in unknown.stderr and "Traceback" not in unknown.stderr

    missing = ingest_cli(["ingest", "--model", MODEL, "--camera", "c", "--source",
                       str(tmp_path / "no.mp4")], url)  # fmt: skip
    assert missing.returncode == 2 and "not found" in missing.stderr

    (tmp_path / "notes.txt").write_text("not a video")
    unreadable = ingest_cli(["ingest", "--model", MODEL, "--camera", "c", "--source",
                          str(tmp_path / "notes.txt")], url)  # fmt: skip
    assert unreadable.returncode == 2 and "cannot open video source" in unreadable.stderr

    unpaired = ingest_cli(["ingest", "--model", MODEL, "--camera", "a", "--camera", "b",
                        "--source", synth], url)  # fmt: skip
    assert unpaired.returncode == 2 and "one --source per --camera" in unpaired.stderr


def _connect(port: int, timeout: float = 15.0) -> VideoSource:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return VideoSource(
                f"tcp://127.0.0.1:{port}",
                "tcpcam",
                open_timeout=5,
                read_timeout=5,
                reconnect_initial=0.2,
                reconnect_max=0.5,
            )
        except BadInput:  # the server process is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_live_stream_drops_and_comes_back_on_the_same_port() -> None:
    port = free_port()
    first = start_stream_server(port, seconds=1.5, start=0)
    second = None
    frames: list[SourceFrame] = []
    try:
        with capture_logs() as logs:
            source = _connect(port)
            assert source.live and source.fps == 25
            reader = threading.Thread(target=lambda: frames.extend(source), daemon=True)
            reader.start()
            assert first.wait(20) == 0, first.stderr.read().decode() if first.stderr else ""
            time.sleep(1.0)  # the camera stays away for a while: failed attempts, with backoff
            second = start_stream_server(port, seconds=2.0, start=1000)
            deadline = time.monotonic() + 15
            while source.reconnects == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            before = len(frames)  # every frame of the first server (it ended before this)
            while len(frames) < before + 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            source.close()
            reader.join(10)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    assert not reader.is_alive()
    assert before >= 20, f"only {before} frames before the drop"
    assert len(frames) >= before + 20, f"{len(frames) - before} frames after the reconnect"
    assert [f.seq for f in frames] == list(range(len(frames)))  # rising, no gap, no reset
    assert frames[before].captured_at > frames[before - 1].captured_at
    assert source.reconnects == 1

    events = [e["event"] for e in logs]
    assert "source_disconnected" in events and "source_reconnected" in events
    down, up = events.index("source_disconnected"), events.index("source_reconnected")
    assert down < up
    failed = [e for e in logs[down:up] if e["event"] == "source_reconnect_failed"]
    assert [e["attempt"] for e in failed] == list(range(1, len(failed) + 1))
    assert logs[up]["attempts"] == len(failed) + 1 >= 2  # refused while it was away
    assert logs[up]["camera_id"] == logs[down]["camera_id"] == "tcpcam"
