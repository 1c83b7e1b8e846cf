"""``framepool bench profile``: where one worker's time goes, by thread and by function.

Issue #7 asks to profile the hot path and remove what the numbers show; this makes
that profile one command instead of a hand-run py-spy. It starts a private
``redis-server`` and one ``framepool worker --models noop`` (``--model``: any model
of the zoo; ``noop`` leaves only the path a frame takes through Celery, kombu,
Redis and the worker: the per-frame cost that caps a GPU worker's frames/s), sends
a warm-up, then runs the same closed loop (``--frames`` frames through
``FrameProducer``, 32-64 outstanding) twice: once as it is, for the frames/s and the
worker's CPU per frame, and once with py-spy (``py-spy record --threads --format
raw``, in the ``dev`` extra) sampling the worker at ``--rate`` Hz. By default only
the samples of the thread holding the GIL count (``--gil``: the Python work, which
one core at most can do per process); ``--idle`` samples every thread, waiting
ones too (where a thread waits on Redis or a lock). The report gives each kind of
thread's share of the samples, the functions where samples were taken (*self*) and
the functions anywhere on the stack (*inclusive*; those under nearly every sample of
their thread, its entry points, left out), each also as µs per frame.
py-spy pauses the worker for each sample, so the profiled run is slower and the µs
are inflated: read them as shares. Results go to ``benchmarks/results/profile.json``
and to docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import profile_report
from benchmarks.harness import machine_info, proc_cpu_s, save_report, test_frames, utc_minute
from benchmarks.peers_clients import FramepoolPeer, run_closed
from benchmarks.peers_stats import BATCH, closed_stats
from benchmarks.pipeline import start_framepool_worker
from benchmarks.sandbox import BenchError, Sandbox, run_measure
from framepool.settings import Settings
from workers.placement import host_cpus

CHUNK = 32  # closed loop: 32-64 frames outstanding
WARMUP = 256
MODES = ("gil", "idle")
NOT_INSTALLED = "py-spy is not installed (pip install -e '.[dev]', or pip install py-spy)"


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_py_spy() -> str:
    """py-spy beside this interpreter (a virtualenv's bin) or on PATH; BenchError if none."""
    here = Path(sys.executable).with_name("py-spy")
    if here.is_file():
        return str(here)
    found = shutil.which("py-spy")
    if found is None:
        raise BenchError(NOT_INSTALLED)
    return found


def py_spy_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.split()[-1] if out.split() else "?"


def command_line(model: str, frames: int, rate: float, mode: str) -> str:
    parts = ["framepool bench profile"]
    if model != "noop":
        parts.append(f"--model {model}")
    parts.append(f"--frames {frames} --rate {rate:g}")
    if mode != "gil":
        parts.append(f"--{mode}")
    return " ".join(parts)


def _closed(peer: FramepoolPeer, pid: int, frames: int) -> dict[str, Any]:
    cpu0 = proc_cpu_s(pid)
    replies, wall = run_closed(peer, frames, CHUNK)
    cpu = proc_cpu_s(pid) - cpu0
    stats = closed_stats(replies, wall)
    stats["worker_cpu_ms_per_frame"] = round(cpu * 1000.0 / frames, 3)
    return stats


@contextlib.contextmanager
def spying(exe: str, pid: int, rate: float, mode: str, out: Path) -> Any:
    """py-spy recording ``pid`` into ``out`` for the duration of the block."""
    argv = [exe, "record", "--pid", str(pid), "--rate", f"{rate:g}", "--format", "raw",
            "--output", str(out), "--threads", f"--{mode}"]  # fmt: skip
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # attached (py-spy samples from its first tick)
    if spy.poll() is not None:
        said = spy.stdout.read() if spy.stdout else ""
        raise BenchError(f"py-spy could not sample the worker: {said[-1500:]}")
    try:
        yield spy
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            said, _ = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            said, _ = spy.communicate()
        if not out.exists() or out.stat().st_size == 0:
            raise BenchError(f"py-spy wrote no samples: {(said or '')[-1500:]}")


def measure(sb: Sandbox, model: str, device: str, frames: int, rate: float, mode: str, exe: str,
            jpegs: list[bytes]) -> dict[str, Any]:  # fmt: skip
    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    worker = start_framepool_worker(sb, model, host_cpus(), device, "profile")
    peer = FramepoolPeer(settings, model, jpegs)
    try:
        run_closed(peer, WARMUP, CHUNK)
        plain = _closed(peer, worker.pid, frames)
        _log(f"without the profiler: {plain['steady_fps']:.1f} frames/s")
        with tempfile.TemporaryDirectory(prefix="framepool-profile-") as tmp:
            raw = Path(tmp) / "samples.txt"
            with spying(exe, worker.pid, rate, mode, raw):
                spied = _closed(peer, worker.pid, frames)
            text = raw.read_text(encoding="utf-8", errors="replace")
        _log(f"with py-spy: {spied['steady_fps']:.1f} frames/s")
    finally:
        peer.close()
        sb.stop(worker)
    return {"unprofiled": plain, "profiled": spied, "raw": text}


def main(*, model: str, frames: int, rate: float, mode: str, top: int, out: Path, docs: bool,
         started: float) -> int:  # fmt: skip
    import torch

    if mode not in MODES:
        raise BenchError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    exe = find_py_spy()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    command = command_line(model, frames, rate, mode)
    jpegs = test_frames(16, quality=Settings().jpeg_quality)
    info = machine_info()
    _log(f"{command}: {info['nproc']} CPUs, {info['cpu']}")
    res = run_measure(lambda sb: measure(sb, model, device, frames, rate, mode, exe, jpegs))
    if isinstance(res, int):
        return res
    try:
        prof = profile_report.aggregate(res["raw"], frames, rate, top)
    except ValueError as exc:
        raise BenchError(f"py-spy's output: {exc}") from None
    if prof["samples"] == 0:
        raise BenchError("py-spy took no samples of the worker")
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "model": model,
            "frames": frames,
            "rate": rate,
            "mode": mode,
            "max_batch_size": BATCH,
            "device": device,
            "worker_threads": host_cpus(),
            "py_spy": py_spy_version(exe),
        },
        "unprofiled": res["unprofiled"],
        "profiled": res["profiled"],
        "profile": prof,
        "runtime_s": round(time.time() - started, 1),
    }
    return save_report(report, out, profile_report.DOCS, profile_report.update_docs,
                       profile_report.show, write_docs=docs)  # fmt: skip
