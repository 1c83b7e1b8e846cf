"""``framepool bench …``: the benchmarks in ``benchmarks/`` (results in docs/benchmarks.md)."""

from __future__ import annotations

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
def bench_pipeline(frames: int, repeats: int, out: str) -> None:
    """End to end against the model's own loop and plain Celery (issue 2's goals)."""
    from benchmarks.pipeline import main as run

    started = time.time()
    sys.exit(run(frames=frames, repeats=repeats, out=Path(out), started=started))


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
    try:
        numbers = [int(c) for c in split_list(counts)]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        fail(f"--workers must be comma-separated integers >= 1, got {counts!r}")
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        fail(f"--threads must be auto or an integer >= 1, got {threads!r}")
    check_models(load_settings(), [model_id])
    from benchmarks.scale import main as run

    sys.exit(run(model=model_id, counts=numbers, frames=frames, repeats=repeats, gpus=gpus,
                 threads=threads, out=Path(out), docs=not no_docs, started=started))  # fmt: skip
