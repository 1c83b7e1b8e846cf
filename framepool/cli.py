"""The ``framepool`` command line.

The CLI is the one place that reaches into every package; it imports them
inside each command, so ``framepool worker`` can pin its GPU before torch is
imported and ``framepool submit`` never loads torch at all.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from framepool.errors import BrokerUnavailable, FramepoolError, UnknownModel
from framepool.settings import Settings, get_settings

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_models(settings: Settings, model_ids: list[str]) -> None:
    from framepool.manifest import discover

    known, errors = discover(settings.models_root)
    for m in model_ids:
        if m in errors:
            _fail(f"model {m!r} has a broken manifest: {errors[m]}")
        if m not in known:
            _fail(str(UnknownModel(m, list(known))))


def _require_redis(settings: Settings) -> None:
    from framepool.redis_server import ping

    if not ping(settings.redis_url, timeout=2.0):
        _fail(
            "Redis unreachable at REDIS_URL; start one with `framepool up` or set REDIS_URL",
            EXIT_UNAVAILABLE,
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="framepool")
def main() -> None:
    """framepool: queue-driven, GPU-aware inference worker pool for camera frames."""


@main.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda:N")
@click.option("--models", "models_", required=True, help="comma-separated model ids")
@click.option("--concurrency", type=click.IntRange(1), help="frames in flight [2*MAX_BATCH_SIZE]")
@click.option("--name", help="worker name [<device>-1@<host>]")
def worker(device: str, models_: str, concurrency: int | None, name: str | None) -> None:
    """One worker process pinned to one device, consuming its models' queues."""
    from workers.device import pin_device  # no torch: the pin must come first

    try:
        pinned = pin_device(device)
    except FramepoolError as exc:
        _fail(str(exc))
    settings = _settings()
    from framepool.log import configure_logging

    configure_logging(settings)
    model_ids = _split(models_)
    if not model_ids:
        _fail("--models needs at least one model id")
    _check_models(settings, model_ids)
    _require_redis(settings)
    from workers.main import run_worker

    try:
        code = run_worker(settings, pinned, model_ids, concurrency, name)
    except FramepoolError as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command()
@click.option("--model", "model_id", required=True)
@click.option("--camera", "camera_id", default=None)
@click.option("--wait", is_flag=True, help="wait for and print each result")
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait per result")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def submit(
    model_id: str, camera_id: str | None, wait: bool, timeout: float, images: tuple[str, ...]
) -> None:
    """Enqueue image files; print job ids (or results with --wait) as JSON lines."""
    settings = _settings()
    items: list[dict[str, Any]] = []
    for seq, path in enumerate(images):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            _fail(f"cannot read {path}: {exc.strerror}")
        items.append({"model_id": model_id, "frame": data, "camera_id": camera_id, "seq": seq})
    _require_redis(settings)
    from producer import FrameProducer

    try:
        with FrameProducer(settings) as producer:
            handles = producer.submit_many(items)
            for path, h in zip(images, handles, strict=True):
                if not wait:
                    click.echo(
                        json.dumps(
                            {"file": path, "job_id": h.job_id, "correlation_id": h.correlation_id}
                        )
                    )
                    continue
                result = h.get(timeout=timeout)
                click.echo(json.dumps({"file": path, **result.model_dump(mode="json")}))
    except BrokerUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except FramepoolError as exc:
        _fail(str(exc))


@main.command()
@click.option("--camera", "camera_id", required=True)
@click.option("--follow", is_flag=True, help="keep printing new results")
@click.option("--count", default=100, show_default=True, help="results to print without --follow")
def results(camera_id: str, follow: bool, count: int) -> None:
    """Print a camera's results (JSON lines) from its Redis stream."""
    import redis

    from framepool import keys

    settings = _settings()
    _require_redis(settings)
    client = redis.Redis.from_url(settings.redis_url)
    stream = keys.result_stream(camera_id)
    entries = client.xrevrange(stream, count=count)[::-1]
    last = b"$"
    for entry_id, fields in entries:
        click.echo(fields[b"result"].decode())
        last = entry_id
    try:
        while follow:
            for _, batch in client.xread({stream: last}, block=1000, count=500) or []:
                for entry_id, fields in batch:
                    click.echo(fields[b"result"].decode())
                    last = entry_id
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--worker", "worker_name", required=True, help="worker name, e.g. gpu0-1@host")
@click.option("--batches", default=1, show_default=True, type=click.IntRange(1, 10000))
@click.option("--model", "model_id", default=None, help="one model [every model of the worker]")
@click.option("--timeout", default=5.0, show_default=True, help="seconds to wait for the reply")
def profile(worker_name: str, batches: int, model_id: str | None, timeout: float) -> None:
    """Run the next N batches of a worker under torch.profiler (kernel stats in its heartbeat)."""
    from framepool import keys
    from framepool.celery_app import create_app

    settings = _settings()
    _require_redis(settings)
    app = create_app(settings)
    replies = app.control.broadcast(
        keys.PROFILE_COMMAND,
        arguments={"batches": batches, "model": model_id},
        destination=[worker_name],
        reply=True,
        timeout=timeout,
    )
    answer = next((r[worker_name] for r in replies if worker_name in r), None)
    if answer is None:
        _fail(f"worker {worker_name!r} did not answer within {timeout:g}s", EXIT_UNAVAILABLE)
    if "error" in answer:
        _fail(answer["error"])
    click.echo(json.dumps({"worker": worker_name, "pending_batches": answer["ok"]}))


def _serve(app: Any, host: str, port: int, name: str, hint: str) -> None:
    """Run one of framepool's HTTP services under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    click.echo(f"framepool {name} on http://{host}:{port}/ ({hint})", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,  # callers waiting on results do not hold a stop
    )


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="[MONITOR_PORT]")
def monitor(port: int | None) -> None:
    """The monitor service: /metrics, /health, the GPU API, the live stream and the dashboard."""
    settings = _settings()
    if port is not None:
        settings = settings.model_copy(update={"monitor_port": port})
    from framepool.log import configure_logging

    configure_logging(settings)

    from monitoring.app import configure_gc, create_app

    app = create_app(settings)
    configure_gc()
    _serve(
        app, settings.server_host, settings.monitor_port, "monitor", "metrics /metrics, API /docs"
    )


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="[SERVER_PORT]")
def gateway(port: int | None) -> None:
    """The HTTP gateway: /inference, /v1/frames, /v1/jobs, /capabilities, /health, /metrics."""
    settings = _settings()
    if port is not None:
        settings = settings.model_copy(update={"server_port": port})
    from framepool.log import configure_logging

    configure_logging(settings)

    from producer.gateway import create_gateway

    _serve(
        create_gateway(settings),
        settings.server_host,
        settings.server_port,
        "gateway",
        "POST /inference, /v1/frames/<model>; API /docs",
    )


@main.command()
@click.option("--watch", is_flag=True, help="refresh every second until Ctrl-C")
def status(watch: bool) -> None:
    """Workers, GPUs, models, queues and alerts as terminal tables (reads Redis directly)."""
    import redis
    from rich.console import Console
    from rich.live import Live

    from monitoring.alerts import AlertEngine
    from monitoring.cluster import ClusterReader
    from monitoring.status import render_status

    settings = _settings()
    _require_redis(settings)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    reader = ClusterReader(client, settings)
    alerts = AlertEngine(client, settings)

    def picture() -> Any:
        return render_status(reader.read(), alerts.active())

    console = Console()
    if not watch:
        console.print(picture())
        return
    try:
        with Live(picture(), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(1.0)
                live.update(picture())
    except KeyboardInterrupt:
        pass


@main.command(name="models")
def models_cmd() -> None:
    """List the models under MODELS_ROOT and their manifests."""
    from rich.console import Console
    from rich.table import Table

    from framepool.manifest import discover

    settings = _settings()
    found, errors = discover(settings.models_root)
    table = Table(title=f"models in {settings.models_root}")
    for col in ("id", "version", "input", "labels", "max batch", "memory MB", "weights"):
        table.add_column(col)
    for m in found.values():
        table.add_row(
            m.id,
            m.version,
            f"{m.input_size[0]}x{m.input_size[1]}",
            ", ".join(m.labels[:5]) + (" …" if len(m.labels) > 5 else ""),
            str(m.max_batch_size),
            f"{m.memory_mb:g}",
            m.weights.file if m.weights else "(built in code)",
        )
    Console().print(table)
    for folder, err in errors.items():
        click.echo(f"broken: {folder}: {err}", err=True)
    if not found:
        _fail(f"no models under {settings.models_root}")


@main.command()
@click.option("--gpus", default="all", show_default=True, help="all, none or a list like 0,1")
@click.option("--workers-per-gpu", default=1, show_default=True, type=click.IntRange(1))
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
    """Start Redis (embedded when REDIS_URL is local and silent), the workers and the monitor."""
    from framepool.stack import Stack

    settings = _settings()
    model_ids = _split(models_)
    _check_models(settings, model_ids)
    try:
        with Stack(
            settings,
            gpus=gpus,
            workers_per_gpu=workers_per_gpu,
            models=model_ids,
            monitor=not no_monitor,
            gateway=not no_gateway,
        ) as st:
            st.print_urls()
            st.wait()
    except (FramepoolError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--duration", type=float, default=None, help="seconds to run [until Ctrl-C]")
@click.option("--cameras", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--fps", default=10.0, show_default=True, type=click.FloatRange(0.1, 1000))
@click.option("--model", "model_id", default="shape_detector", show_default=True)
@click.option("--gpus", default="all", show_default=True)
def demo(duration: float | None, cameras: int, fps: float, model_id: str, gpus: str) -> None:
    """The whole system on this machine with synthetic cameras and a live table."""
    from framepool.demo import run_demo

    settings = _settings()
    _check_models(settings, [model_id])
    try:
        run_demo(
            settings, duration=duration, cameras=cameras, fps=fps, model_id=model_id, gpus=gpus
        )
    except FramepoolError as exc:
        _fail(str(exc))


@main.group()
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
        sizes = None if batches is None else [int(b) for b in _split(batches)]
    except ValueError:
        _fail(f"--batches must be comma-separated integers, got {batches!r}")
    if sizes is not None and (not sizes or min(sizes) < 1):
        _fail(f"--batches must be comma-separated integers >= 1, got {batches!r}")
    model_ids = None if models_ is None else _split(models_)
    if model_ids is not None and not model_ids:
        _fail("--models needs at least one model id")
    settings = _settings()
    from benchmarks.models import main as run

    sys.exit(run(settings, model_ids, sizes, repeats, out=Path(out), started=started))


if __name__ == "__main__":
    main()
