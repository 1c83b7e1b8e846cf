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
from typing import Any

import click

from framepool.cli_bench import bench
from framepool.cli_common import (
    EXIT_UNAVAILABLE,
    check_models,
    fail,
    load_settings,
    require_redis,
    split_list,
)
from framepool.errors import BrokerUnavailable, FramepoolError


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
    settings = load_settings()
    items: list[dict[str, Any]] = []
    for seq, path in enumerate(images):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}")
        items.append({"model_id": model_id, "frame": data, "camera_id": camera_id, "seq": seq})
    require_redis(settings)
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
        fail(str(exc), EXIT_UNAVAILABLE)
    except FramepoolError as exc:
        fail(str(exc))


@main.command()
@click.option("--model", "model_id", required=True)
@click.option("--camera", "cameras", multiple=True, required=True,
              help="camera id; repeat it, one per --source, for several cameras")  # fmt: skip
@click.option("--source", "sources", multiple=True, required=True,
              help="FILE, FOLDER, rtsp://…, http(s)://…, tcp://…, /dev/videoN or synthetic[?fps=…]")  # fmt: skip
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None,
              help="frames/s to send per camera, chosen by timestamp [every frame]")  # fmt: skip
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              help="stop after S seconds [when the sources end]")  # fmt: skip
@click.option("--count", type=click.IntRange(1), default=None,
              help="stop each camera after N frames read (a synthetic camera never ends)")  # fmt: skip
@click.option("--deadline-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="a frame not started within this expires")  # fmt: skip
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 256),
              help="frames per Redis pipeline")  # fmt: skip
@click.option("--max-queued", default=256, show_default=True, type=click.IntRange(1),
              help="files and folders wait while the model's queue holds this many")  # fmt: skip
def ingest(
    model_id: str,
    cameras: tuple[str, ...],
    sources: tuple[str, ...],
    fps: float | None,
    duration: float | None,
    count: int | None,
    deadline_ms: float | None,
    batch_size: int,
    max_queued: int,
) -> None:
    """Camera ingest: decode sources, sample at --fps, enqueue; a JSON summary at the end.

    Several cameras: repeat --camera/--source pairs, matched in order
    (--camera a --source a.mp4 --camera b --source rtsp://host/b). Live sources
    reconnect when they drop and run until --duration, --count or Ctrl-C.
    See docs/ingest.md.
    """
    settings = load_settings()
    if len(cameras) != len(sources):
        fail(f"give one --source per --camera (got {len(cameras)} and {len(sources)})")
    interactive = sys.stdout.isatty()
    from framepool.log import configure_logging
    from producer.ingest import IngestConfig, LiveStderr, run_ingest
    from producer.sources import FrameSource, open_source

    if interactive:  # logs print above the progress display
        configure_logging(settings.model_copy(update={"log_format": "console"}), LiveStderr())
    else:
        configure_logging(settings)

    opened: list[FrameSource] = []
    try:
        config = IngestConfig(
            model_id,
            fps=fps,
            duration=duration,
            count=count,
            deadline_ms=deadline_ms,
            batch_size=batch_size,
            max_queued=max_queued,
        )
        for camera_id, spec in zip(cameras, sources, strict=True):
            opened.append(open_source(spec, camera_id))
        require_redis(settings)
        from producer import FrameProducer

        with FrameProducer(settings) as producer:
            summary = run_ingest(producer, opened, config, progress=interactive)
    except BrokerUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except FramepoolError as exc:
        fail(str(exc))
    finally:
        for source in opened:
            source.close()
    click.echo(json.dumps(summary))
    failed = [f"camera {c}: {v['error']}" for c, v in summary["cameras"].items() if v["error"]]
    if failed:
        fail("; ".join(failed), 1)


@main.command()
@click.option("--camera", "camera_id", required=True)
@click.option("--follow", is_flag=True, help="keep printing new results")
@click.option("--count", default=100, show_default=True, help="results to print first")
@click.option("--skip-late", is_flag=True, help="leave out results that came out of seq order")
def results(camera_id: str, follow: bool, count: int, skip_late: bool) -> None:
    """Print a camera's results (JSON lines) from its Redis stream.

    A result that arrived after one of a later frame (same camera and model)
    carries "late": true; --skip-late leaves those out, so seq only rises.
    """
    import redis

    from producer.results import CameraResults

    settings = load_settings()
    require_redis(settings)
    reader = CameraResults(redis.Redis.from_url(settings.redis_url), camera_id, skip_late=skip_late)
    for r in reader.recent(count):
        click.echo(r.as_json())
    if not follow:
        return
    try:
        for r in reader.follow():
            click.echo(r.as_json())
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--worker", "worker_name", required=True, help="worker name, e.g. gpu0-1@host")
@click.option("--batches", default=1, show_default=True, type=click.IntRange(1, 10000))
@click.option("--model", "model_id", default=None, help="one model [every model of the worker]")
@click.option("--timeout", default=5.0, show_default=True, help="seconds to wait for the reply")
def profile(worker_name: str, batches: int, model_id: str | None, timeout: float) -> None:
    """Run the next N batches of a worker under torch.profiler (its kernel table in Redis)."""
    from framepool import keys
    from framepool.celery_app import create_app

    settings = load_settings()
    require_redis(settings)
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
        fail(f"worker {worker_name!r} did not answer within {timeout:g}s", EXIT_UNAVAILABLE)
    if "error" in answer:
        fail(answer["error"])
    click.echo(json.dumps({"worker": worker_name, "pending_batches": answer["ok"]}))


@main.command()
@click.option("--model", "model_id", required=True)
@click.option("--workers", "target", required=True, type=click.IntRange(0),
              help="how many workers should consume the model's queue")  # fmt: skip
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.1),
              help="seconds to wait for the workers' replies")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of text")
def scale(model_id: str, target: int, timeout: float, dry_run: bool, as_json: bool) -> None:
    """Make N running workers consume MODEL's queue; the others keep running untouched.

    Workers start or stop consuming through Celery's add_consumer/cancel_consumer. Only
    workers that have the model loaded can take it (start more with `framepool worker
    --models M` on any host with the same REDIS_URL); a restarted worker consumes all
    its models again. Exits 3 when fewer workers than asked have the model loaded.
    """
    import redis

    from framepool import keys
    from framepool.celery_app import create_app
    from monitoring.cluster import ClusterReader
    from monitoring.scaling import LEAVING, USABLE, plan_consumers

    settings = load_settings()
    check_models(settings, [model_id])
    require_redis(settings)
    reader = ClusterReader(redis.Redis.from_url(settings.redis_url, socket_timeout=5), settings)
    live = {w.name: w for w in reader.read().workers if w.state not in LEAVING}
    if not live:
        fail("no live workers (no heartbeats in Redis): start some first", EXIT_UNAVAILABLE)
    app = create_app(settings)
    names = sorted(live)
    replies = app.control.inspect(destination=names, timeout=timeout, limit=len(names))
    consuming = {
        w: [q["name"] for q in qs] for w, qs in (replies.active_queues() or {}).items() if w in live
    }
    loaded = {w: (live[w].models.get(model_id) or {}).get("state") in USABLE for w in consuming}
    change = plan_consumers(model_id, target, consuming, loaded)
    queue = keys.queue_name(model_id)
    failed: dict[str, str] = {}
    for workers_, command in ((change.add, "add_consumer"), (change.remove, "cancel_consumer")):
        for w in [] if dry_run else workers_:
            got = getattr(app.control, command)(queue, destination=[w], reply=True, timeout=timeout)
            answer = next((r[w] for r in got if w in r), None)
            if not answer or "ok" not in answer:
                failed[w] = str(answer or f"no reply within {timeout:g}s")
    silent = sorted(set(live) - set(consuming))
    added = [w for w in change.add if w not in failed]
    removed = [w for w in change.remove if w not in failed]
    after = sorted((set(change.before) | set(added)) - set(removed))
    report: dict[str, Any] = {
        "model_id": model_id,
        "queue": queue,
        "target": target,
        "before": change.before,
        "added": added,
        "removed": removed,
        "after": after,
        "short": change.short,
        "failed": failed,
        "silent": silent,
        "dry_run": dry_run,
    }
    if as_json:
        click.echo(json.dumps(report))
    else:
        note = "  (dry run: nothing changed)" if dry_run else ""
        click.echo(f"{model_id}: {len(change.before)} -> {len(after)} worker(s){note}")
        for w in added:
            click.echo(f"  + {w}  starts consuming {queue}")
        for w in removed:
            click.echo(f"  - {w}  stops consuming {queue}")
        for w, why in failed.items():
            click.echo(f"  ! {w}  failed: {why}", err=True)
        click.echo(f"consuming: {', '.join(after) or '(none: frames wait in the queue)'}")
        if silent:
            click.echo(f"no reply from: {', '.join(silent)}", err=True)
    if change.short:
        with_model = sorted(w for w, ok in loaded.items() if ok)
        fail(
            f"{target} asked, but only {len(with_model)} live worker(s) have {model_id} loaded "
            f"({', '.join(with_model) or 'none'}); start more with `framepool worker --models "
            f"{model_id}` on any host with the same REDIS_URL",
            EXIT_UNAVAILABLE,
        )
    if failed:
        sys.exit(EXIT_UNAVAILABLE)


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
    settings = load_settings()
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
    settings = load_settings()
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
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="[FLOWER_PORT]")
@click.option(
    "--no-auth", is_flag=True, help="run Flower open, without FLOWER_BASIC_AUTH (not advised)"
)
def flower(port: int | None, no_auth: bool) -> None:
    """Flower on framepool's Celery app: every frame task; basic auth from FLOWER_BASIC_AUTH."""
    from framepool.flower import flower_argv, run_flower, users

    settings = load_settings()
    if port is not None:
        settings = settings.model_copy(update={"flower_port": port})
    try:
        argv = flower_argv(settings, no_auth=no_auth)
    except FramepoolError as exc:
        fail(str(exc))
    from framepool.log import configure_logging

    configure_logging(settings)
    require_redis(settings)
    who = ", ".join(users(settings)) or "NO AUTH"
    click.echo(
        f"framepool flower on http://{settings.server_host}:{settings.flower_port}/ "
        f"(basic auth: {who}; API /api/tasks, /api/workers)",
        err=True,
    )
    sys.exit(run_flower(settings, argv))


@main.command()
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 1000),
              help="deliveries in flight (threads)")  # fmt: skip
@click.option("--name", help="worker name [callbacks@<host>]")
def callbacks(concurrency: int, name: str | None) -> None:
    """The webhook worker: POSTs results to their callback_url (queue framepool.callbacks)."""
    settings = load_settings()
    from framepool.log import configure_logging

    configure_logging(settings)
    require_redis(settings)
    from workers.callbacks import run_callbacks_worker  # no torch

    sys.exit(run_callbacks_worker(settings, concurrency, name))


@main.command(name="dead-letters")
@click.option("--kind", type=click.Choice(["callback", "frame"]), default=None,
              help="only this kind [all]")  # fmt: skip
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1),
              help="entries to list (or requeue)")  # fmt: skip
@click.option("--requeue", is_flag=True,
              help="send them again (callbacks redelivered, frames enqueued as new jobs "
              "with the same correlation id), then drop them")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def dead_letters(kind: str | None, limit: int, requeue: bool, as_json: bool) -> None:
    """Work framepool gave up on (webhooks that kept failing, ...), newest first."""
    import redis
    from rich.console import Console

    from framepool import deadletters
    from framepool.celery_app import create_app

    settings = load_settings()
    require_redis(settings)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    if requeue:
        report = deadletters.requeue(client, create_app(settings), kind=kind, limit=limit)
        summary = {"requeued": report.requeued, "skipped": dict(report.skipped)}
        click.echo(json.dumps(summary) if as_json else deadletters.describe(summary))
        return
    letters = [
        deadletters.public(d.entry) for d in deadletters.read(client, kind=kind, limit=limit)
    ]
    if as_json:
        for entry in letters:
            click.echo(json.dumps(entry))
        return
    Console().print(deadletters.render_table(letters, deadletters.total(client)))


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

    settings = load_settings()
    require_redis(settings)
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

    settings = load_settings()
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
        fail(f"no models under {settings.models_root}")


@main.command()
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


@main.command()
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


main.add_command(bench)


if __name__ == "__main__":
    main()
