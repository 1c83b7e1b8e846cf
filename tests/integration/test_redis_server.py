"""Embedded Redis: a real redis-server, AOF on, password, clean stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from framepool.errors import BrokerUnavailable
from framepool.redis_server import EmbeddedRedis, ensure_redis, find_redis_server, ping


def test_find_redis_server_gives_an_executable() -> None:
    assert Path(find_redis_server()).name == "redis-server"


def test_embedded_redis_persists_with_aof_and_needs_its_password(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, password="pw1").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        rewrite_at = client.config_get("auto-aof-rewrite-min-size")["auto-aof-rewrite-min-size"]
        assert int(rewrite_at) == 1024**3  # AOF_REWRITE_MIN_SIZE: few forks under frame load
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert not ping(f"redis://127.0.0.1:{server.port}/0")  # no password: refused
        port = server.port
    finally:
        server.stop()
    assert not ping(server.url)
    # Restart on the same data directory: the AOF brings the key back.
    again = EmbeddedRedis(tmp_path, port=port, password="pw1").start()
    try:
        assert redis.Redis.from_url(again.url).get("k") == b"v"
    finally:
        again.stop()


def test_ensure_redis_uses_a_reachable_url_as_is(redis_url: str, tmp_path: Path) -> None:
    url, started = ensure_redis(redis_url, tmp_path)
    assert url == redis_url and started is None


def test_ensure_redis_starts_one_for_a_silent_local_url(tmp_path: Path) -> None:
    from framepool.redis_server import free_port

    port = free_port()
    url, started = ensure_redis(f"redis://127.0.0.1:{port}/0", tmp_path)
    try:
        assert started is not None and started.port == port
        assert started.password and ping(url)  # a generated password
    finally:
        assert started is not None
        started.stop()


def test_ensure_redis_refuses_a_silent_remote_url(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        ensure_redis("redis://127.0.0.2:1/0", tmp_path)  # not "local": never started
