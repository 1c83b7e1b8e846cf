"""``framepool bench …``: the benchmarks in ``benchmarks/`` (results in docs/benchmarks.md)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click

from framepool.cli_common import check_models, fail, load_settings, split_list


@click.group()
def bench() -> None:
    """Reproducible benchmarks (results in docs/benchmarks.md)."""


@bench.command(name="pipeline")
@click.option("--frames", default=600, show_default=True, type=click.IntRange(10))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--out", default="benchmarks/results/pipeline.json", show_default=True)
@click.option("--no-docs", is_flag=True, help="leave docs/benchmarks.md alone (a trial run)")
def bench_pipeline(frames: int, repeats: int, out: str, no_docs: bool) -> None:
    """End to end against the model's own loop and plain Celery (issue 2's goals)."""
    from benchmarks.pipeline import main as run

    started = time.time()
    sys.exit(run(frames=frames, repeats=repeats, out=Path(out), started=started,
                 docs=not no_docs))  # fmt: skip


@bench.command(name="peers")
@click.option("--model", "model_id", default="resnet18", show_default=True,
              help="the model every system runs")  # fmt: skip
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="the batch cap of every system, also the limit's batch")  # fmt: skip
@click.option("--device", default=None,
              help="cpu or cuda:N [cuda:0 when CUDA is available, else cpu]")  # fmt: skip
@click.option("--frames", default=400, show_default=True, type=click.IntRange(16),
              help="frames per closed-loop run")  # fmt: skip
@click.option("--latency-frames", type=click.IntRange(16),
              help="frames per open-loop run [frames / 2]")  # fmt: skip
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--load", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="open-loop rate as a fraction of the tight loop's")  # fmt: skip
@click.option("--cameras", default=4, show_default=True, type=click.IntRange(1))
@click.option("--peers", "peers_", default="ray,triton", show_default=True,
              help="peers to compare, comma-separated (ray, triton), or none")  # fmt: skip
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 16),
              help="framepool worker processes, Ray replicas and Triton instances, the torch "
              "threads shared out among them (the direct call keeps one model)")  # fmt: skip
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 64),
              help="client processes per system (1: the bench process drives them all; a "
              "GPU outruns one process: 8 there)")  # fmt: skip
@click.option("--out", default="benchmarks/results/peers.json", show_default=True)
@click.option("--no-docs", is_flag=True, help="leave docs/benchmarks.md alone (a trial run)")
def bench_peers(
    model_id: str,
    batch: int,
    device: str | None,
    frames: int,
    latency_frames: int | None,
    repeats: int,
    load: float,
    cameras: int,
    peers_: str,
    replicas: int,
    clients: int,
    out: str,
    no_docs: bool,
) -> None:
    """framepool against calling the model directly, Ray Serve and Triton (issue 7)."""
    started = time.time()
    chosen = [] if peers_.strip() == "none" else split_list(peers_)
    if any(p not in ("ray", "triton") for p in chosen):
        fail(f"--peers takes ray, triton (comma-separated) or none; got {peers_!r}")
    _check_device(device)
    check_models(load_settings(), [model_id])
    from benchmarks.peers import main as run

    sys.exit(run(frames=frames, repeats=repeats, out=Path(out), started=started,
                 latency_frames=latency_frames, load=load, cameras=cameras,
                 peers=tuple(p for p in ("ray", "triton") if p in chosen),
                 docs=not no_docs, replicas=replicas, model=model_id, batch=batch,
                 device=device, clients=clients))  # fmt: skip


def _check_device(device: str | None) -> None:
    if device is not None and not (device == "cpu" or re.fullmatch(r"cuda:\d+", device)):
        fail(f"--device must be cpu or cuda:N, got {device!r}")


@bench.command(name="ab")
@click.option("--a-env", multiple=True, metavar="KEY=VALUE",
              help="environment of side A's worker (repeatable)")  # fmt: skip
@click.option("--b-env", multiple=True, metavar="KEY=VALUE",
              help="environment of side B's worker (repeatable)")  # fmt: skip
@click.option("--base", metavar="REF",
              help="run side A from a git worktree of REF (B: this checkout as it is)")  # fmt: skip
@click.option("--a-workers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="side A's worker processes (the torch threads shared out among them)")  # fmt: skip
@click.option("--b-workers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="side B's worker processes")  # fmt: skip
@click.option("--pairs", default=6, show_default=True, type=click.IntRange(1))
@click.option("--frames", default=300, show_default=True, type=click.IntRange(16),
              help="frames per closed-loop run")  # fmt: skip
@click.option("--latency-frames", default=300, show_default=True, type=click.IntRange(16),
              help="frames per open-loop run")  # fmt: skip
@click.option("--load", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="open-loop rate as a fraction of the tight loop's")  # fmt: skip
@click.option("--fps", type=click.FloatRange(0, min_open=True),
              help="open-loop rate in frames/s (instead of --load; skips the tight loop)")  # fmt: skip
@click.option("--cameras", default=4, show_default=True, type=click.IntRange(1))
@click.option("--model", "model_id", default="resnet18", show_default=True,
              help="the workers' model (another than resnet18 needs --fps)")  # fmt: skip
@click.option("--out", default="benchmarks/results/ab.json", show_default=True)
@click.option("--no-docs", is_flag=True, help="leave docs/benchmarks.md alone (a trial run)")
def bench_ab(a_env: tuple[str, ...], b_env: tuple[str, ...], base: str | None, a_workers: int,
             b_workers: int, pairs: int,
             frames: int, latency_frames: int, load: float, fps: float | None, cameras: int,
             model_id: str, out: str, no_docs: bool) -> None:  # fmt: skip
    """One change to the worker (settings, or code against --base), in interleaved pairs."""
    from benchmarks.ab import SAME, check_rate, parse_env, resolve_ref
    from benchmarks.ab import main as run
    from benchmarks.sandbox import BenchError

    started = time.time()
    try:
        a, b = parse_env(a_env), parse_env(b_env)
    except ValueError as exc:
        fail(str(exc))
    if base is None and a == b and a_workers == b_workers:
        fail(SAME)
    check_models(load_settings(), [model_id])
    try:
        check_rate(model_id, fps)
        if base is not None:
            resolve_ref(base)
        code = run(a_env=a, b_env=b, base=base, pairs=pairs, frames=frames,
                   latency_frames=latency_frames, load=load, fps=fps, cameras=cameras,
                   out=Path(out), docs=not no_docs, started=started,
                   workers=(a_workers, b_workers), model=model_id)  # fmt: skip
    except BenchError as exc:
        fail(str(exc))
    sys.exit(code)


@bench.command(name="profile")
@click.option("--model", "model_id", default="noop", show_default=True,
              help="the worker's model (noop: the per-frame path alone)")  # fmt: skip
@click.option("--frames", default=4000, show_default=True, type=click.IntRange(64),
              help="frames per closed-loop run (one without py-spy, one with)")  # fmt: skip
@click.option("--rate", default=100.0, show_default=True, type=click.FloatRange(1, 2000),
              help="py-spy's samples per second")  # fmt: skip
@click.option("--idle", is_flag=True,
              help="sample every thread, waiting ones too (default: GIL holders only)")  # fmt: skip
@click.option("--top", default=15, show_default=True, type=click.IntRange(1, 200),
              help="functions listed")  # fmt: skip
@click.option("--out", default="benchmarks/results/profile.json", show_default=True)
@click.option("--no-docs", is_flag=True, help="leave docs/benchmarks.md alone (a trial run)")
def bench_profile(model_id: str, frames: int, rate: float, idle: bool, top: int, out: str,
                  no_docs: bool) -> None:  # fmt: skip
    """Where one worker's time goes, by thread and function (py-spy, closed loop)."""
    from benchmarks.profile_worker import find_py_spy
    from benchmarks.profile_worker import main as run
    from benchmarks.sandbox import BenchError

    started = time.time()
    check_models(load_settings(), [model_id])
    try:
        find_py_spy()
        code = run(model=model_id, frames=frames, rate=rate, mode="idle" if idle else "gil",
                   top=top, out=Path(out), docs=not no_docs, started=started)  # fmt: skip
    except BenchError as exc:
        fail(str(exc))
    sys.exit(code)


@bench.command(name="monitor")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(5),
              help="seconds per CPU window")  # fmt: skip
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1),
              help="CPU windows")  # fmt: skip
@click.option("--reads", default=30, show_default=True, type=click.IntRange(3),
              help="timed read() calls")  # fmt: skip
@click.option("--out", default="benchmarks/results/monitor.json", show_default=True)
def bench_monitor(duration: float, repeats: int, reads: int, out: str) -> None:
    """The monitor with 32 workers x 5 models: read() and /metrics time, CPU per second."""
    from benchmarks.monitor import main as run

    started = time.time()
    sys.exit(run(duration=duration, repeats=repeats, reads=reads, out=Path(out), started=started))


@bench.command(name="models")
@click.option("--models", "models_", help="comma-separated model ids [resnet50,resnet18]")
@click.option("--batches", help="comma-separated batch sizes [1,8,32 on CPU; 1,8,32,64 on CUDA]")
@click.option("--repeats", type=click.IntRange(1), help="timed repeats per figure [5]")
@click.option("--out", default="benchmarks/results/models.json", show_default=True)
def bench_models(models_: str | None, batches: str | None, repeats: int | None, out: str) -> None:
    """Models' throughput (fp32/fp16), measured memory, profiler cost, OOM recovery."""
    started = time.time()
    try:
        sizes = None if batches is None else [int(b) for b in split_list(batches)]
    except ValueError:
        fail(f"--batches must be comma-separated integers, got {batches!r}")
    if sizes is not None and (not sizes or min(sizes) < 1):
        fail(f"--batches must be comma-separated integers >= 1, got {batches!r}")
    model_ids = None if models_ is None else split_list(models_)
    if model_ids is not None and not model_ids:
        fail("--models needs at least one model id")
    settings = load_settings()
    from benchmarks.models import main as run

    sys.exit(run(settings, model_ids, sizes, repeats, out=Path(out), started=started))


@bench.command(name="scale")
@click.option("--model", "model_id", default="resnet18", show_default=True)
@click.option("--workers", "counts", default="1,2,4", show_default=True,
              help="worker processes per GPU (CPU workers without one), comma-separated")  # fmt: skip
@click.option("--frames", default=400, show_default=True, type=click.IntRange(10))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--gpus", default="all", show_default=True, help="all, none or a list like 0,1")
@click.option("--threads", default="auto", show_default=True,
              help="torch threads per worker: auto (CPUs / workers on CPU) or a number")  # fmt: skip
@click.option("--out", default="benchmarks/results/scale.json", show_default=True)
@click.option("--no-docs", is_flag=True, help="leave docs/benchmarks.md alone (a trial run)")
def bench_scale(
    model_id: str,
    counts: str,
    frames: int,
    repeats: int,
    gpus: str,
    threads: str,
    out: str,
    no_docs: bool,
) -> None:
    """Frames/s of one model with 1, 2, 4 ... worker processes (speed-up, efficiency)."""
    started = time.time()
    numbers = _counts(counts, "--workers")
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        fail(f"--threads must be auto or an integer >= 1, got {threads!r}")
    check_models(load_settings(), [model_id])
    from benchmarks.scale import main as run

    sys.exit(run(model=model_id, counts=numbers, frames=frames, repeats=repeats, gpus=gpus,
                 threads=threads, out=Path(out), docs=not no_docs, started=started))  # fmt: skip


def _counts(value: str, option: str) -> list[int]:
    """Comma-separated integers >= 1, or a clear exit."""
    try:
        numbers = [int(c) for c in split_list(value)]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        fail(f"{option} must be comma-separated integers >= 1, got {value!r}")
    return numbers


@bench.command(name="gpu")
@click.option("--model", "model_id", default="resnet50", show_default=True)
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="batch cap (MAX_BATCH_SIZE), also the limit's batch")  # fmt: skip
@click.option("--frames", default=8000, show_default=True, type=click.IntRange(16),
              help="frames per run (plain Celery runs a quarter)")  # fmt: skip
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--workers", "counts", default="1,2", show_default=True,
              help="framepool worker processes on the GPU, comma-separated")  # fmt: skip
@click.option("--clients", default=4, show_default=True, type=click.IntRange(1, 64),
              help="producer processes (plain Celery: threads)")  # fmt: skip
@click.option("--device", default=None,
              help="cuda:N [cuda:0]; cpu runs the same steps as a trial")  # fmt: skip
@click.option("--out", default="benchmarks/results/gpu.json", show_default=True)
@click.option("--no-docs", is_flag=True, help="leave docs/benchmarks.md alone (a trial run)")
def bench_gpu(model_id: str, batch: int, frames: int, repeats: int, counts: str, clients: int,
              device: str | None, out: str, no_docs: bool) -> None:  # fmt: skip
    """One model on one GPU end to end: the model's limit, framepool, plain Celery, GPU use."""
    started = time.time()
    numbers = _counts(counts, "--workers")
    _check_device(device)
    check_models(load_settings(), [model_id])
    from benchmarks.gpu import main as run

    sys.exit(run(model=model_id, batch=batch, frames=frames, repeats=repeats, workers=numbers,
                 clients=clients, device=device, out=Path(out), started=started,
                 docs=not no_docs))  # fmt: skip


@bench.command(name="sweep")
@click.option("--axes", default="cameras,frame_size,workers,batch_cap,redis_memory",
              show_default=True, help="comma-separated axes to measure")  # fmt: skip
@click.option("--quick", is_flag=True, help="fewer points, one repeat, short windows (~3 min)")
@click.option("--repeats", type=click.IntRange(1), help="repeats per point [2; 1 with --quick]")
@click.option("--load", type=click.FloatRange(0, 2, min_open=True),
              help="cameras: total offered load as a fraction of capacity [0.5]")  # fmt: skip
@click.option("--camera-fps", type=click.FloatRange(0, min_open=True),
              help="cameras: a fixed rate per camera instead of --load")  # fmt: skip
@click.option("--out", default="benchmarks/results/sweep.json", show_default=True)
@click.option("--no-docs", is_flag=True,
              help="leave docs/ alone (plots go beside --out): a trial run")  # fmt: skip
def bench_sweep(
    axes: str,
    quick: bool,
    repeats: int | None,
    load: float | None,
    camera_fps: float | None,
    out: str,
    no_docs: bool,
) -> None:
    """Where the cost grows: cameras, frame size, workers, batch cap, Redis memory."""
    started = time.time()
    from benchmarks.sweep import AXES, main, make_plan

    chosen = split_list(axes)
    unknown = [a for a in chosen if a not in AXES]
    if not chosen or unknown:
        fail(f"--axes takes some of {', '.join(AXES)}; got {axes!r}")
    if load is not None and camera_fps is not None:
        fail("--load and --camera-fps both set the cameras' rate: give one")
    plan = make_plan(quick, repeats, load, camera_fps)
    ordered = [a for a in AXES if a in chosen]
    sys.exit(main(axes=ordered, plan=plan, quick=quick, out=Path(out), docs=not no_docs,
                  started=started))  # fmt: skip
