"""The ``framepool`` command line: the group, and the commands that run the pool.

Here: ``worker`` (one worker process), ``up`` (the whole stack) and ``demo``.
The other commands live beside this file, by feature, and are attached below:
cli_frames.py (submit, ingest, results), cli_services.py (monitor, gateway,
flower, callbacks), cli_ops.py (scale, profile, status, dead-letters, models),
cli_bench.py (``framepool bench …``); cli_common.py holds what they share.

The CLI is the one place that reaches into every package; it imports them
inside each command, so ``framepool worker`` can pin its GPU before torch is
imported and ``framepool submit`` never loads torch at all.
"""

from __future__ import annotations

import sys

import click

from framepool.cli_bench import bench
from framepool.cli_common import check_models, fail, load_settings, require_redis, split_list
from framepool.cli_frames import ingest, results, submit
from framepool.cli_ops import dead_letters, models_cmd, profile, scale, status
from framepool.cli_services import callbacks, flower, gateway, monitor
from framepool.errors import FramepoolError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="framepool")
def main() -> None:
    """framepool: queue-driven, GPU-aware inference worker pool for camera frames."""


@click.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda:N")
@click.option("--models", "models_", required=True, help="comma-separated model ids")
@click.option("--concurrency", type=click.IntRange(1), help="frames in flight [2*MAX_BATCH_SIZE]")
@click.option("--name", help="worker name [<device>-1@<host>]")
def worker(device: str, models_: str, concurrency: int | None, name: str | None) -> None:
    """One worker process pinned to one device, consuming its models' queues."""
    from workers.device import cpu_wait_policy, pin_device  # no torch: the pin comes first

    settings = load_settings()
    model_ids = split_list(models_)
    if not model_ids:
        fail("--models needs at least one model id")
    manifests = check_models(settings, model_ids)
    waits = [manifests[m].cpu_wait for m in model_ids]
    try:
        pinned = pin_device(device, cpu_wait_policy(settings.cpu_wait_policy, waits))
    except FramepoolError as exc:
        fail(str(exc))
    from framepool.log import configure_logging

    configure_logging(settings)
    require_redis(settings)
    from workers.main import run_worker

    try:
        code = run_worker(settings, pinned, model_ids, concurrency, name)
    except FramepoolError as exc:
        fail(str(exc))
    sys.exit(code)


@click.command()
@click.option("--gpus", default="all", show_default=True, help="all, none or a list like 0,1")
@click.option("--workers-per-gpu", default=1, show_default=True, type=click.IntRange(1),
              help="worker processes per GPU (CPU workers without one)")  # fmt: skip
@click.option("--models", "models_", default="shape_detector", show_default=True)
@click.option("--no-flower", is_flag=True, help="do not start Flower")
@click.option("--no-gateway", is_flag=True, help="do not start the HTTP gateway")
@click.option("--no-monitor", is_flag=True, help="do not start the monitor")
def up(
    gpus: str,
    workers_per_gpu: int,
    models_: str,
    no_flower: bool,
    no_gateway: bool,
    no_monitor: bool,
) -> None:
    """Start Redis (embedded when REDIS_URL is local and silent), the workers and the monitor.

    One worker per (GPU, slot), pinned with CUDA_VISIBLE_DEVICES; a crashed worker is
    restarted with backoff, and one that keeps exiting stops everything (exit 6).
    Workers that share a GPU run through an MPS daemon of framepool's own
    (CUDA_MPS=auto|on|off).
    Ctrl-C or SIGTERM drains: workers hand back the frames they have not started and
    finish their batches within SHUTDOWN_GRACE_SECONDS.
    """
    from framepool.stack import Stack

    settings = load_settings()
    model_ids = split_list(models_)
    check_models(settings, model_ids)
    try:
        with Stack(
            settings,
            gpus=gpus,
            workers_per_gpu=workers_per_gpu,
            models=model_ids,
            monitor=not no_monitor,
            gateway=not no_gateway,
            flower=not no_flower,
        ) as st:
            st.print_urls()
            st.wait()
            for message in st.supervisor.messages:  # a worker given up on: say so first
                click.echo(f"error: {message}", err=True)
    except (FramepoolError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return
    if st.supervisor.exit_code:
        click.echo(f"framepool up: stopped (exit {st.supervisor.exit_code})", err=True)
        sys.exit(st.supervisor.exit_code)


@click.command()
@click.option("--duration", type=float, default=None, help="seconds to run [until Ctrl-C]")
@click.option("--cameras", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--fps", default=10.0, show_default=True, type=click.FloatRange(0.1, 1000))
@click.option("--model", "model_id", default="shape_detector", show_default=True)
@click.option("--gpus", default="all", show_default=True)
def demo(duration: float | None, cameras: int, fps: float, model_id: str, gpus: str) -> None:
    """The whole system on this machine with synthetic cameras and a live table."""
    from framepool.demo import run_demo

    settings = load_settings()
    check_models(settings, [model_id])
    try:
        run_demo(
            settings, duration=duration, cameras=cameras, fps=fps, model_id=model_id, gpus=gpus
        )
    except FramepoolError as exc:
        fail(str(exc))


# in the order they were always registered (``framepool --help`` sorts them by name)
for _command in (worker, submit, ingest, results, profile, scale, monitor, gateway, flower,
                 callbacks, dead_letters, status, models_cmd, up, demo, bench):  # fmt: skip
    main.add_command(_command)


if __name__ == "__main__":
    main()
