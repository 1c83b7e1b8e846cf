"""``framepool bench sweep`` against a real Redis: the Redis-memory axis, one camera
point through a real worker, and the command itself on its shortest axis."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import redis

from benchmarks import harness
from benchmarks.sweep_cameras import camera_point, camera_schedule
from benchmarks.sweep_memory import MODEL, modes, redis_memory
from framepool import keys
from framepool.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_redis_memory_counts_every_queued_frame_and_cleans_up(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.config_set("auto-aof-rewrite-percentage", 77)
    data = redis_memory(redis_url, ((320, 240),), k=6, log=lambda msg: None)
    points = {p["mode"]: p for p in data["points"]}
    assert set(points) == {m for m, _ in modes()}
    for p in points.values():
        assert p["frames"] == 6 and p["jpeg_bytes"] > 5000
        # the frame is in Redis once, whichever way it travels, and the rest is small
        assert p["payload_bytes"] >= p["jpeg_bytes"]
        assert p["stored_bytes_per_frame"] >= p["payload_bytes"]
        # (used_memory's delta is reported but not checked: over 6 frames on a shared
        # Redis it moved between 464 and ~30,000 bytes per frame in CI runs)
    inline = points["in message"]
    assert not inline["claim_check"] and inline["frame_key_bytes"] == 0
    # kombu's Redis transport stores the msgpack body base64-encoded in its envelope
    assert inline["body_encoding"] == "base64"
    assert inline["message_bytes"] >= 4 * math.ceil(inline["jpeg_bytes"] / 3)
    if "claim check" in points:
        claimed = points["claim check"]
        assert claimed["claim_check"] and claimed["frame_key_bytes"] == claimed["jpeg_bytes"]
        assert claimed["message_bytes"] < 4096  # metadata only
        # MEMORY USAGE of the keys: used_memory's delta over 6 frames is at the mercy
        # of the allocator and client buffers (it swung by ~10 KB per frame here)
        assert claimed["stored_bytes_per_frame"] < inline["stored_bytes_per_frame"]
    # nothing left behind, and the server's setting is restored
    assert sum(client.llen(name) for name in keys.queue_lists(MODEL)) == 0
    assert not list(client.scan_iter(match=f"{keys.PREFIX}:frame:*"))
    assert client.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "77"}
    client.config_set("auto-aof-rewrite-percentage", 100)


def test_a_camera_point_through_a_real_worker(
    settings: Settings, redis_url: str, start_worker
) -> None:
    start_worker(["noop"], MAX_BATCH_SIZE="4")
    jpegs = harness.test_frames(2, 320, 240)
    x = camera_point(settings, "noop", jpegs, cameras=4, fps=5.0, warmup_s=0.5, window_s=1.5)
    window = [s for s in camera_schedule(4, 5.0, 2.0, seed=0) if s[0] >= 0.5]
    assert x["frames"] == len(window) > 10
    assert x["statuses"] == {"ok": len(window)}
    assert x["cameras_seen"] == 4
    assert 0 < x["client_p50_ms"] <= x["client_p99_ms"]
    assert 0 < x["e2e_p50_ms"] <= x["e2e_p99_ms"]
    assert x["steady_fps"] > 0 and x["mean_batch_size"] >= 1
    assert "producer" in x["cpu_ms_per_frame"]
    # every camera's results went to its own stream (warm-up frames too)
    client = redis.Redis.from_url(redis_url)
    per_camera = [client.xlen(keys.result_stream(f"cam-{c:03d}")) for c in range(4)]
    assert sum(per_camera) == len(camera_schedule(4, 5.0, 2.0, seed=0))


def test_the_command_on_its_shortest_axis(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "sweep", "--axes", "redis_memory",
         "--quick", "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["measured"] == ["redis_memory"] and report["errors"] == {}
    sizes = {(p["width"], p["height"]) for p in report["axes"]["redis_memory"]["points"]}
    assert sizes == {(320, 240), (640, 480), (1280, 720), (1920, 1080)}
    assert "#### Redis memory per queued frame" in proc.stdout
    assert "docs untouched" in proc.stdout
    plot = tmp_path / "sweep-redis-memory.png"
    assert plot.exists() or "plots skipped: matplotlib is not installed" in proc.stdout
