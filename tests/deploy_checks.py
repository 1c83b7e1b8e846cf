"""What deployment files (docker-compose.yml, deploy/k8s) may name, checked against the code.

- a container's arguments must be a real ``framepool`` subcommand with real
  options, parsed by that subcommand's own click parser;
- every environment variable set on a framepool container must be a Settings
  field (env name = field name upper-cased) or one of :data:`NON_SETTINGS`;
- a probe or healthcheck path must be a route of the service's FastAPI app, on
  the port that service listens on by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import click

from framepool.settings import DEFAULT_MODELS_ROOT, Settings

ROOT = Path(__file__).resolve().parent.parent

#: Variables set on framepool containers that are not framepool settings, and why.
NON_SETTINGS = {
    "REDIS_PASSWORD": "k8s: holds the Secret's password so REDIS_URL can use $(REDIS_PASSWORD)",
    "NVIDIA_VISIBLE_DEVICES": "read by the NVIDIA Container Toolkit, not by framepool",
    "NVIDIA_DRIVER_CAPABILITIES": "read by the NVIDIA Container Toolkit, not by framepool",
    "PYTHONUNBUFFERED": "Python itself",
    "PYTHONDONTWRITEBYTECODE": "Python itself",
    "PIP_NO_CACHE_DIR": "pip, at image build time",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, at image build time",
    "PIP_ROOT_USER_ACTION": "pip, at image build time",
}

_DEVICE = re.compile(r"^(auto|cpu|cuda:\d+)$")


def setting_env_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def env_problems(names: Iterable[str], where: str) -> list[str]:
    known = setting_env_names()
    return [
        f"{where}: {name} is neither a framepool setting nor a documented non-setting"
        for name in names
        if name not in known and name not in NON_SETTINGS
    ]


def default_port(service: str) -> int | None:
    """The port a framepool service listens on when no setting changes it."""
    field = {"monitor": "monitor_port", "gateway": "server_port", "flower": "flower_port"}.get(
        service
    )
    if field is None:
        return None
    port = Settings.model_fields[field].default
    assert isinstance(port, int)
    return port


def resolve_command(args: Sequence[str]) -> tuple[list[str], click.Command, list[str]]:
    """(subcommand path, the click command, its remaining arguments) for ``framepool ARGS``."""
    from framepool.cli import main

    cmd: click.Command = main
    path: list[str] = []
    rest = list(args)
    while isinstance(cmd, click.Group):
        if not rest:
            raise click.UsageError(f"framepool {' '.join(path)} needs a subcommand".strip())
        name = rest.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            have = ", ".join(sorted(cmd.commands))
            raise click.UsageError(f"framepool has no command {name!r} (it has: {have})")
        cmd = sub
        path.append(name)
    return path, cmd, rest


def cli_problems(args: Sequence[str], where: str) -> list[str]:
    """Why ``framepool ARGS`` would not start (unknown command or option, bad value)."""
    try:
        path, cmd, rest = resolve_command(args)
        ctx = cmd.make_context(f"framepool {' '.join(path)}", list(rest))
    except click.ClickException as exc:
        return [f"{where}: {exc.format_message()}"]
    problems = []
    if path == ["worker"]:
        device = str(ctx.params["device"])
        if not _DEVICE.match(device):
            problems.append(f"{where}: --device {device!r} is not auto, cpu or cuda:N")
        for model in worker_models(args):
            if model not in zoo_models():
                problems.append(f"{where}: --models names {model!r}, not a model of the zoo")
    return problems


def worker_models(args: Sequence[str]) -> list[str]:
    """The model ids of a ``framepool worker`` command line."""
    path, cmd, rest = resolve_command(args)
    assert path == ["worker"], path
    ctx = cmd.make_context("framepool worker", list(rest))
    return [m.strip() for m in str(ctx.params["models_"]).split(",") if m.strip()]


@cache
def zoo_models() -> frozenset[str]:
    from framepool.manifest import discover

    return frozenset(discover(DEFAULT_MODELS_ROOT)[0])


def _settings() -> Settings:
    return Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0")


@cache
def routes(service: str) -> frozenset[str]:
    """The HTTP paths a framepool service serves (its FastAPI app's routes)."""
    if service == "monitor":
        import fakeredis

        from monitoring.alerts import AlertEngine
        from monitoring.app import create_app
        from monitoring.cluster import ClusterReader

        settings, client = _settings(), fakeredis.FakeRedis()
        reader, alerts = ClusterReader(client, settings), AlertEngine(client, settings)
        app = create_app(settings, reader, alerts, poll=False)
    elif service == "gateway":
        from producer.gateway import create_gateway

        app = create_gateway(_settings())
    else:
        return frozenset()
    return frozenset(getattr(r, "path", "") for r in app.routes)


def route_problems(service: str, path: str, port: int | str, where: str) -> list[str]:
    problems = []
    bare = path.split("?", 1)[0]
    if bare not in routes(service):
        problems.append(f"{where}: {service} has no route {bare} ({sorted(routes(service))})")
    if port != default_port(service):
        problems.append(f"{where}: {service} listens on {default_port(service)}, not {port}")
    return problems
