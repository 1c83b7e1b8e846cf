"""``framepool bench ab``: one change to the worker, measured in interleaved pairs.

The question before keeping a change made for speed: does the worker run faster
with it than without it, by more than the noise of a shared machine? Side *A* is
the worker without the change, side *B* with it; the two differ by the
environment (``--a-env`` / ``--b-env KEY=VALUE``: a setting, a thread count) and
by the code when ``--base REF`` is given (A then runs from a ``git worktree`` of
REF, B from this checkout as it is, uncommitted changes included).

Each pair starts a fresh ``framepool worker --models resnet18`` (``--model``: another
model of the zoo, e.g. ``noop`` for the per-frame cost of the path alone, with ``--fps``
since ``--load`` is a fraction of resnet18's tight loop) for each side in turn, against the same private Redis, with the same frames (16 distinct 640x480
JPEGs, q90) through ``FrameProducer``, and stops it before the other starts; the
side that goes first alternates from pair to pair. Per side: a warm-up (64
frames), an open loop (``--latency-frames`` frames from ``--cameras`` cameras at
``--load`` of the tight loop's rate, measured once at the start, as in ``bench
peers``: p50/p99 from send to reply on the client, and the part of it while no
forward pass ran, *model idle*), then a closed loop (``--frames`` frames, 32-64
outstanding: frames/s from the worker's completion stamps after the first 10 %)
and the worker's and Redis's CPU time per frame. Each figure is reported as B/A
within each pair; the median of those ratios, their range and the number of pairs
in which B was ahead say whether the change holds. Results go to
``benchmarks/results/ab.json`` and to docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import ab_report
from benchmarks.harness import ROOT, machine_info, save_report, test_frames, utc_minute
from benchmarks.peers_clients import FramepoolPeer, run_closed, run_open
from benchmarks.peers_stats import BATCH, closed_stats, cpu_split, open_schedule, open_stats
from benchmarks.pipeline import CpuMeter, start_framepool_workers, tight_loop
from benchmarks.sandbox import BenchError, Sandbox, run_measure
from framepool.settings import Settings

MODEL = "resnet18"  # the default; the tight loop (--load) is this model's
CHUNK = 32  # closed loop: 32-64 frames outstanding
DISTINCT_FRAMES = 16
SIDES = ("a", "b")
SAME = "A and B would be the same workers: give --base, --a-env, --b-env or --a/--b-workers"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings -> a dict; a ValueError that names the bad item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ValueError(f"expected KEY=VALUE (KEY a variable name), got {item!r}")
        out[key] = value
    return out


def check_rate(model: str, fps: float | None) -> None:
    """``--load`` is a fraction of resnet18's tight loop: another model needs ``--fps``."""
    if model != MODEL and fps is None:
        raise BenchError(
            f"--load is a fraction of {MODEL}'s tight loop; give --fps for --model {model}"
        )


def order(pair: int) -> tuple[str, str]:
    """Which side runs first in pair ``pair``: A in even pairs, B in odd ones."""
    return SIDES if pair % 2 == 0 else (SIDES[1], SIDES[0])


@dataclass(frozen=True)
class Side:
    """One side of the comparison: the worker's extra environment and its code."""

    env: Mapping[str, str] = field(default_factory=dict)
    tree: Path | None = None  # None: this checkout
    code: str = "this checkout"  # what runs, for the report
    workers: int = 1  # worker processes, the torch threads shared out among them

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        procs = f", {self.workers} worker processes" if self.workers > 1 else ""
        return f"{self.code}{procs}{', ' + env if env else ''}"

    def threads(self, total: int) -> int:
        """Torch threads per worker process: ``total`` shared out, at least 1."""
        return max(1, total // self.workers)


@dataclass(frozen=True)
class Plan:
    frames: int
    latency_frames: int
    pairs: int
    load: float
    cameras: int
    fps: float | None
    threads: int
    device: str
    model: str = MODEL


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def resolve_ref(ref: str) -> str:
    """The commit ``ref`` names in this checkout, or a BenchError that says so."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except BenchError:
        raise BenchError(f"--base {ref!r} is not a commit of this repository") from None


@contextlib.contextmanager
def worktree(sha: str) -> Iterator[Path]:
    """A detached ``git worktree`` of ``sha`` in a temp directory, removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="framepool-ab-"))
    path = parent / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield path
    finally:
        with contextlib.suppress(BenchError, OSError, subprocess.TimeoutExpired):
            _git("worktree", "remove", "--force", str(path))
        with contextlib.suppress(BenchError, OSError, subprocess.TimeoutExpired):
            _git("worktree", "prune")
        shutil.rmtree(parent, ignore_errors=True)


def run_side(sb: Sandbox, plan: Plan, side: Side, name: str, peer: FramepoolPeer,
             times: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """Start side's workers, warm them up, run the open then the closed loop, stop them."""
    names = [name] if side.workers == 1 else [f"{name}-{i}" for i in range(side.workers)]
    workers = start_framepool_workers(sb, plan.model, side.threads(plan.threads), plan.device, names,
                                      env=side.env, tree=side.tree)  # fmt: skip
    pids = [w.pid for w in workers] + [sb.redis.proc.pid]
    ran_in = os.readlink(f"/proc/{workers[0].pid}/cwd")  # which checkout's code they run

    def meter() -> CpuMeter:
        return CpuMeter({f"srv:{pid}": pid for pid in pids})

    try:
        run_closed(peer, 2 * CHUNK, CHUNK)  # warm-up: first batches, caches, the heap
        m = meter()
        done, late = run_open(peer, times)
        opened = open_stats(done, late)
        opened["cpu_ms_per_frame"] = cpu_split(m.per_frame_ms(len(times)))
        m = meter()
        replies, wall = run_closed(peer, plan.frames, CHUNK)
        closed = closed_stats(replies, wall)
        closed["cpu_ms_per_frame"] = cpu_split(m.per_frame_ms(plan.frames))
    finally:
        for w in workers:
            sb.stop(w)
    return {"open": opened, "closed": closed, "cwd": ran_in}


def measure(sb: Sandbox, plan: Plan, sides: Mapping[str, Side],
            jpegs: Sequence[bytes]) -> dict[str, Any]:  # fmt: skip
    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    res: dict[str, Any] = {"pairs": []}
    fps = plan.fps
    if fps is None:
        calib = tight_loop(settings, jpegs, max(4 * BATCH, plan.frames // 4), plan.threads,
                           plan.device)  # fmt: skip
        res["calibration_fps"] = round(calib.steady_fps, 2)
        fps = plan.load * calib.steady_fps
    res["open_fps"] = round(fps, 2)
    sched = open_schedule(plan.latency_frames, fps, plan.cameras)
    peer = FramepoolPeer(settings, plan.model, jpegs)
    peer.camera_of = [c for _, c, _ in sched]
    _log(f"open loop at {fps:.1f} frames/s from {plan.cameras} cameras")
    try:
        for p in range(plan.pairs):
            pair: dict[str, Any] = {"order": "".join(order(p))}
            for s in order(p):
                pair[s] = run_side(sb, plan, sides[s], f"ab-{s}{p}", peer, [t for t, _, _ in sched])
                o, c = pair[s]["open"], pair[s]["closed"]
                _log(f"pair {p + 1} {s.upper()}: closed {c['steady_fps']:.1f} frames/s, open "
                     f"p50 {o['e2e_p50_ms']:.1f} p99 {o['e2e_p99_ms']:.1f} ms")  # fmt: skip
            res["pairs"].append(pair)
    finally:
        peer.close()
    return res


def command_line(a_env: Mapping[str, str], b_env: Mapping[str, str], base: str | None,
                 plan: Plan, workers: tuple[int, int] = (1, 1)) -> str:  # fmt: skip
    parts = ["framepool bench ab"]
    if plan.model != MODEL:
        parts.append(f"--model {plan.model}")
    parts += [f"--a-env {k}={v}" for k, v in a_env.items()]
    parts += [f"--b-env {k}={v}" for k, v in b_env.items()]
    parts += [f"--{s}-workers {n}" for s, n in zip(SIDES, workers, strict=True) if n != 1]
    if base:
        parts.append(f"--base {base}")
    parts.append(
        f"--pairs {plan.pairs} --frames {plan.frames} --latency-frames {plan.latency_frames}"
    )
    parts.append(f"--fps {plan.fps:g}" if plan.fps else f"--load {plan.load:g}")
    parts.append(f"--cameras {plan.cameras}")
    return " ".join(parts)


def main(*, a_env: Mapping[str, str], b_env: Mapping[str, str], base: str | None, pairs: int,
         frames: int, latency_frames: int, load: float, fps: float | None, cameras: int,
         out: Path, docs: bool, started: float, workers: tuple[int, int] = (1, 1),
         model: str = MODEL) -> int:  # fmt: skip
    import torch

    if base is None and dict(a_env) == dict(b_env) and workers[0] == workers[1]:
        raise BenchError(SAME)
    check_rate(model, fps)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    plan = Plan(frames, latency_frames, pairs, load, cameras, fps, torch.get_num_threads(), device,
                model)  # fmt: skip
    command = command_line(a_env, b_env, base, plan, workers)
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "*.py"))
    here = f"this checkout ({head}{' + uncommitted changes' if dirty else ''})"
    jpegs = test_frames(DISTINCT_FRAMES, quality=Settings().jpeg_quality)
    info = machine_info()
    info["device"] = device
    _log(f"{command}: {info['nproc']} CPUs, {info['cpu']}; {device}, torch threads {plan.threads}")
    with contextlib.ExitStack() as stack:
        if base is None:
            a = Side(dict(a_env), None, here, workers[0])
        else:
            sha = resolve_ref(base)
            tree = stack.enter_context(worktree(sha))
            a = Side(dict(a_env), tree, f"{base} ({sha[:7]})", workers[0])
        sides = {"a": a, "b": Side(dict(b_env), None, here, workers[1])}
        for s, side in sides.items():
            _log(f"{s.upper()}: {side.describe()}")
        res = run_measure(lambda sb: measure(sb, plan, sides, jpegs))
    if isinstance(res, int):
        return res
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "sides": {s: side.describe() for s, side in sides.items()},
        "config": {
            "model": model,
            "frames": frames,
            "latency_frames": latency_frames,
            "pairs": pairs,
            "load": load,
            "cameras": cameras,
            "max_batch_size": BATCH,
            "torch_threads": plan.threads,
            "workers": {s: side.workers for s, side in sides.items()},
            "device": device,
            "calibration_fps": res.get("calibration_fps"),
            "open_fps": res["open_fps"],
        },
        "pairs": res["pairs"],
        "runtime_s": round(time.time() - started, 1),
    }
    report["figures"] = ab_report.build_figures(report["pairs"])
    return save_report(report, out, ab_report.DOCS, ab_report.update_docs, ab_report.show,
                       write_docs=docs)  # fmt: skip
