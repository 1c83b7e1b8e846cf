"""The services beside the workers: ``monitor``, ``gateway``, ``flower``, ``callbacks``.

Each runs until SIGINT/SIGTERM and imports its server (uvicorn, Flower, the
webhook worker) inside the command.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from framepool.cli_common import fail, load_settings, require_redis
from framepool.errors import FramepoolError

#: How long an idle HTTP/1.1 connection stays open. Longer than clients keep theirs
#: (httpx 5 s, aiohttp 15 s) and than a load balancer's idle timeout (AWS ALB 60 s):
#: with uvicorn's 5 s, a client reusing a connection just as the server closes it
#: gets a read error (``make load`` saw one in 1500 requests); docs/gateway.md.
KEEP_ALIVE_S = 65


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
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=10,  # callers waiting on results do not hold a stop
    )


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
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
