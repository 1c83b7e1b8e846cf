"""Operating a running pool: ``scale``, ``profile``, ``status``, ``dead-letters``, ``models``.

They read or steer the pool through Redis and Celery's control commands; each
imports what it needs inside itself.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from framepool.cli_common import (
    EXIT_UNAVAILABLE,
    check_models,
    fail,
    load_settings,
    require_redis,
)


@click.command()
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


@click.command()
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


@click.command(name="dead-letters")
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


@click.command()
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


@click.command(name="models")
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
