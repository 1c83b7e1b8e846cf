"""Where Redis's CPU goes per frame: by command, by Lua script, AOF on or off.

``python -m benchmarks.redis_cost [--model noop] [--frames 3000] [--aof yes|no]``
starts a private ``redis-server`` (as ``framepool up`` does) and one ``framepool
worker``, sends a warm-up, resets Redis's statistics, then runs a closed loop of
``--frames`` frames through ``FrameProducer`` (32-64 outstanding) and prints Redis's
CPU per frame (all threads, and its main thread: the one that serialises every
command), each command's calls and µs per frame (``INFO commandstats``), and each
Lua script's (the slow log at threshold 0, by script: framepool's pop, enqueue
and result write). ``--aof no`` turns the AOF off at run time, to see its share.

``python -m benchmarks.redis_cost --enqueue-ab`` measures one alternative that was
not made: the producer's enqueue with each frame's bytes stored inside its Lua call
(as it is) against a plain pipelined ``SET`` beside a Lua call without them; AOF
off, interleaved pairs, Redis's main-thread CPU per frame.

docs/benchmarks.md ("GPU end to end") quotes both.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import test_frames
from benchmarks.peers_clients import FramepoolPeer, run_closed
from benchmarks.pipeline import start_framepool_worker
from benchmarks.sandbox import Sandbox, run_measure
from framepool.broker import POP_MANY
from framepool.settings import Settings
from producer.enqueue import ENQUEUE
from workers.results import _APPEND

SCRIPTS = {"pop (POP_MANY)": POP_MANY, "enqueue (ENQUEUE)": ENQUEUE, "result write": _APPEND}
CHUNK = 32


def _cpu(client: redis.Redis, main_thread: bool) -> float:
    info = client.info("cpu")
    suffix = "_main_thread" if main_thread else ""
    return float(info[f"used_cpu_sys{suffix}"]) + float(info[f"used_cpu_user{suffix}"])


def by_script(client: redis.Redis, frames: int) -> dict[str, dict[str, float]]:
    """µs per frame and calls of each EVALSHA in the slow log, by framepool's scripts."""
    names = {hashlib.sha1(src.encode()).hexdigest(): name for name, src in SCRIPTS.items()}
    agg: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for entry in client.slowlog_get(1_000_000):
        parts = entry["command"].split(b" ") if isinstance(entry["command"], bytes) else []
        if len(parts) > 1 and parts[0].upper() == b"EVALSHA":
            name = names.get(parts[1].decode(), parts[1][:8].decode())
            agg[name][0] += 1
            agg[name][1] += entry["duration"]
    return {n: {"calls": c, "us_per_frame": us / frames} for n, (c, us) in agg.items()}


def measure(sb: Sandbox, model: str, frames: int, aof: bool) -> dict[str, Any]:
    settings = Settings(redis_url=sb.redis_url, max_batch_size=64)
    worker = start_framepool_worker(sb, model, 2, "cpu", "redis-cost")
    peer = FramepoolPeer(settings, model, test_frames(16, quality=settings.jpeg_quality))
    client = redis.Redis.from_url(sb.redis_url)
    try:
        run_closed(peer, 256, CHUNK)  # warm-up
        if not aof:
            client.config_set("appendonly", "no")
        client.config_resetstat()
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 1_000_000)
        client.slowlog_reset()
        cpu0, main0 = _cpu(client, False), _cpu(client, True)
        _, wall = run_closed(peer, frames, CHUNK)
        cpu, main = _cpu(client, False) - cpu0, _cpu(client, True) - main0
        client.config_set("slowlog-log-slower-than", 10_000)
        stats = client.info("commandstats")
        return {
            "frames_per_s": frames / wall,
            "cpu_us_per_frame": cpu * 1e6 / frames,
            "main_thread_us_per_frame": main * 1e6 / frames,
            "commands": {
                k.removeprefix("cmdstat_"): {
                    "calls_per_frame": v["calls"] / frames,
                    "us_per_frame": v["usec"] / frames,
                }
                for k, v in stats.items()
            },
            "scripts": by_script(client, frames),
        }
    finally:
        client.close()
        peer.close()
        sb.stop(worker)


def show(res: dict[str, Any]) -> None:
    print(f"{res['frames_per_s']:.0f} frames/s; Redis CPU {res['cpu_us_per_frame']:.0f} µs a "
          f"frame, its main thread {res['main_thread_us_per_frame']:.0f}")  # fmt: skip
    cmds = sorted(res["commands"].items(), key=lambda kv: -kv[1]["us_per_frame"])
    print(f"commands (their own time, {sum(v['us_per_frame'] for _, v in cmds):.0f} µs a frame):")
    for name, v in cmds:
        print(
            f"  {name:14s} {v['calls_per_frame']:6.3f} calls  {v['us_per_frame']:7.1f} µs a frame"
        )
    print("Lua scripts:")
    for name, v in sorted(res["scripts"].items(), key=lambda kv: -kv[1]["us_per_frame"]):
        print(f"  {name:18s} {v['calls']:6d} calls  {v['us_per_frame']:7.1f} µs a frame")


def enqueue_ab(frames: int = 3200, pairs: int = 7) -> dict[str, float]:
    """Median µs of Redis main-thread CPU a frame: ENQUEUE with the frames inside the
    Lua call (``lua``) against a pipelined SET beside it (``split``); AOF off."""
    from framepool.redis_server import EmbeddedRedis

    message = b'{"body": "' + b"x" * 1300 + b'"}'  # a frame's Celery message is ~1.3 KB
    frame = os.urandom(73_000)  # a 640x480 JPEG at q90 is ~72 KB
    got: dict[str, list[float]] = {"lua": [], "split": []}
    with (
        tempfile.TemporaryDirectory(prefix="framepool-redis-cost-") as tmp,
        EmbeddedRedis(Path(tmp), appendonly=False) as server,
    ):
        client = redis.Redis.from_url(server.url)
        script = client.register_script(ENQUEUE)

        def send(base: int, split: bool) -> None:
            for c in range(base, base + frames, CHUNK):
                pipe = client.pipeline(transaction=False)
                keys_: list[str] = ["drops", "q"]
                args: list[Any] = [1_000_000, 86_400, 60, 1, 1]
                for i in range(c, c + CHUNK):
                    fkey = f"framepool:frame:{i}"
                    if split:
                        pipe.set(fkey, frame, ex=86_400)
                    keys_ += ["q", "" if split else fkey, ""]
                    args += [1, f"job{i}", "" if split else frame, message]
                script(keys=keys_, args=args, client=pipe)
                pipe.execute()

        for p in range(pairs):
            for name in ("lua", "split"):
                before = _cpu(client, True)
                send(p * 2 * frames, name == "split")
                got[name].append((_cpu(client, True) - before) * 1e6 / frames)
                client.flushall()
        client.close()
    return {name: statistics.median(v) for name, v in got.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.redis_cost", description=__doc__)
    ap.add_argument("--model", default="noop")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--aof", choices=("yes", "no"), default="yes")
    ap.add_argument("--enqueue-ab", action="store_true", help="the enqueue's A/B instead")
    a = ap.parse_args(argv)
    if a.frames < 64:
        ap.error("--frames must be >= 64")
    if a.enqueue_ab:
        started = time.time()
        med = enqueue_ab(max(a.frames, 320))
        print(f"enqueue, Redis main-thread µs a frame (medians): frames inside Lua "
              f"{med['lua']:.1f}, SET beside it {med['split']:.1f} "
              f"({time.time() - started:.0f} s)")  # fmt: skip
        return 0
    res = run_measure(lambda sb: measure(sb, a.model, a.frames, a.aof == "yes"))
    if isinstance(res, int):
        return res
    show(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
