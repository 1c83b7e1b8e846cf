"""``framepool flower``: Flower on framepool's Celery app, locked and light by default.

Flower runs in this process through Celery's own command line
(``app.start(["flower", ...])``, what ``celery -A app flower`` does), so the
credentials travel in memory, never on a process command line. Its options come
from :class:`Settings`:

- ``FLOWER_BASIC_AUTH`` (``user:password[,user2:password2]``): required unless
  the caller asks for an open Flower explicitly;
- ``FLOWER_MAX_TASKS``: the tasks Flower keeps in memory (oldest dropped first);
- ``FLOWER_PURGE_OFFLINE_WORKERS``: seconds after which an offline worker leaves
  the lists;
- ``SERVER_HOST`` / ``FLOWER_PORT``: where it listens.

State is never persisted (``persistent=False``): a frame task is worth seeing
while it is recent, and a shelve file of thousands of frames only slows a restart.
"""

from __future__ import annotations

import os
import secrets

from framepool.errors import BadInput
from framepool.settings import Settings

FORMAT_HINT = "user:password[,user2:password2]"
DEFAULT_USER = "admin"
# Flower reads FLOWER_<OPTION> variables itself; these are Settings' to decide, so
# Flower gets them from argv only (an empty FLOWER_BASIC_AUTH would read as a user "").
_SETTINGS_OWNED_ENV = (
    "FLOWER_BASIC_AUTH",
    "FLOWER_PORT",
    "FLOWER_MAX_TASKS",
    "FLOWER_PURGE_OFFLINE_WORKERS",
)


def parse_basic_auth(value: str) -> list[tuple[str, str]]:
    """``user:password[,user2:password2]`` as (user, password) pairs; BadInput when malformed.

    A password may hold ``:`` but not ``,`` (the separator). Error messages
    name the entry by position and never echo a password.
    """
    pairs: list[tuple[str, str]] = []
    for n, entry in enumerate(value.split(","), start=1):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user.strip() or not password:
            raise BadInput(
                f"FLOWER_BASIC_AUTH must be {FORMAT_HINT}; entry {n} "
                + ("has no ':'" if not sep else "has an empty user or password")
            )
        if user != user.strip():
            raise BadInput(f"FLOWER_BASIC_AUTH entry {n}: the user name has spaces around it")
        pairs.append((user, password))
    return pairs


def generate_basic_auth(user: str = DEFAULT_USER) -> str:
    """Fresh credentials for one run (``framepool up`` without FLOWER_BASIC_AUTH)."""
    return f"{user}:{secrets.token_urlsafe(12)}"


def flower_argv(settings: Settings, *, no_auth: bool = False) -> list[str]:
    """Flower's options (after ``flower``) from the settings.

    Without ``FLOWER_BASIC_AUTH`` this refuses (BadInput) unless ``no_auth``:
    an open Flower lets anyone who reaches the port read every task and shut
    workers down. ``no_auth`` with credentials configured is refused too, so an
    open Flower is never started by a leftover flag.
    """
    creds = settings.flower_basic_auth or ""
    if no_auth and creds:
        raise BadInput("--no-auth given but FLOWER_BASIC_AUTH is set; drop one of them")
    if not creds and not no_auth:
        raise BadInput(
            f"Flower needs credentials: set FLOWER_BASIC_AUTH={FORMAT_HINT}, or pass "
            "--no-auth to run it open (anyone who can reach the port sees every task "
            "and can shut workers down)"
        )
    argv = [
        f"--address={settings.server_host}",
        f"--port={settings.flower_port}",
        f"--max_tasks={settings.flower_max_tasks}",
        "--persistent=False",
        f"--purge_offline_workers={settings.flower_purge_offline_workers}",
        f"--logging={settings.log_level.lower()}",
    ]
    if creds:
        pairs = parse_basic_auth(creds)
        argv.append("--basic_auth=" + ",".join(f"{u}:{p}" for u, p in pairs))
    return argv


def users(settings: Settings) -> list[str]:
    """The user names of ``FLOWER_BASIC_AUTH`` (for banners; no passwords)."""
    if not settings.flower_basic_auth:
        return []
    return [u for u, _ in parse_basic_auth(settings.flower_basic_auth)]


def run_flower(settings: Settings, argv: list[str]) -> int:
    """Run Flower on framepool's Celery app until SIGINT/SIGTERM; returns the exit code."""
    from framepool.celery_app import create_app

    for name in _SETTINGS_OWNED_ENV:
        os.environ.pop(name, None)
    app = create_app(settings)
    code = app.start(["flower", *argv])
    return int(code or 0)
