"""What every ``framepool`` subcommand shares: settings, checks, exit codes."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

import click

from framepool.errors import PASSWORD_HINT, UnknownModel
from framepool.settings import Settings, get_settings

if TYPE_CHECKING:
    from framepool.manifest import ModelManifest

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load_settings() -> Settings:
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        fail(f"invalid settings: {exc}")


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def check_models(settings: Settings, model_ids: list[str]) -> dict[str, ModelManifest]:
    """The models' manifests; a clear exit when one is unknown or broken."""
    from framepool.manifest import discover

    known, errors = discover(settings.models_root)
    for m in model_ids:
        if m in errors:
            fail(f"model {m!r} has a broken manifest: {errors[m]}")
        if m not in known:
            fail(str(UnknownModel(m, list(known))))
    return {m: known[m] for m in model_ids}


def require_redis(settings: Settings) -> None:
    from framepool.redis_server import host_port, probe

    state = probe(settings.redis_url, timeout=2.0)
    if state == "auth":
        fail(
            f"Redis at {host_port(settings.redis_url)} refuses REDIS_URL's password (none "
            f"given, or another): {PASSWORD_HINT}",
            EXIT_UNAVAILABLE,
        )
    if state != "ok":
        fail(
            "Redis unreachable at REDIS_URL; start one with `framepool up` or set REDIS_URL",
            EXIT_UNAVAILABLE,
        )
