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


def test_probe_tells_a_refused_password_from_no_redis(redis_server: EmbeddedRedis) -> None:
    from framepool.redis_server import free_port, probe

    port = redis_server.port
    assert probe(redis_server.url) == "ok"
    assert probe(f"redis://127.0.0.1:{port}/0") == "auth"  # no password given
    assert probe(f"redis://:wrong@127.0.0.1:{port}/0") == "auth"
    assert probe(f"redis://127.0.0.1:{free_port()}/0") == "down"


def test_probe_of_a_password_given_to_a_redis_without_one(tmp_path: Path) -> None:
    from framepool.redis_server import probe

    server = EmbeddedRedis(tmp_path).start()  # no requirepass
    try:
        assert probe(server.url) == "ok"
        # redis-py goes on without AUTH when the server has no password configured
        assert probe(f"redis://:pw@127.0.0.1:{server.port}/0") == "ok"
    finally:
        server.stop()


def test_ensure_redis_does_not_start_a_second_one_where_a_password_is_refused(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"  # `framepool up`'s Redis, no password
    with pytest.raises(BrokerUnavailable, match="refuses REDIS_URL's password"):
        ensure_redis(url, tmp_path)
    assert not (tmp_path / "redis").exists()  # nothing started


def test_two_ports_on_one_data_directory_keep_their_own_data(tmp_path: Path) -> None:
    a = EmbeddedRedis(tmp_path, password="pw").start()
    b = EmbeddedRedis(tmp_path, password="pw").start()
    try:
        redis.Redis.from_url(a.url).set("k", "a")
        assert redis.Redis.from_url(b.url).get("k") is None
        redis.Redis.from_url(b.url).set("k", "b")
        port_a = a.port
    finally:
        a.stop()
        b.stop()
    again = EmbeddedRedis(tmp_path, port=port_a, password="pw").start()
    try:
        assert redis.Redis.from_url(again.url).get("k") == b"a"  # its own AOF, not b's
    finally:
        again.stop()


def test_the_cli_says_when_redis_wants_the_password(redis_server: EmbeddedRedis) -> None:
    from tests.services import run_cli

    r = run_cli("status", env={"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "refuses REDIS_URL's password" in r.stderr
    assert "framepool up` prints" in r.stderr


def test_the_sdk_says_when_redis_wants_the_password(redis_server: EmbeddedRedis) -> None:
    from framepool.settings import Settings
    from producer import FrameProducer
    from tests.unit.test_codec import jpeg

    settings = Settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    with FrameProducer(settings) as p, pytest.raises(BrokerUnavailable) as info:
        p.submit("shape_detector", jpeg(32, 24))
    assert "refuses REDIS_URL's password" in str(info.value)
    assert "framepool up` prints it" in str(info.value)


def test_io_threads_one_by_default_and_as_many_as_asked(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "one") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("io-threads")["io-threads"] == "1"
    with EmbeddedRedis(tmp_path / "three", io_threads=3) as server:
        client = redis.Redis.from_url(server.url)
        got = client.config_get("io-threads*")
        assert got == {"io-threads": "3", "io-threads-do-reads": "yes"}
        client.set("frame", b"x" * 70_000)  # served with the threads on
        assert client.get("frame") == b"x" * 70_000
    with pytest.raises(ValueError, match="io_threads must be >= 1"):
        EmbeddedRedis(tmp_path / "none", io_threads=0)


def test_ensure_redis_passes_io_threads(tmp_path: Path) -> None:
    from framepool.redis_server import free_port

    url, server = ensure_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path, io_threads=2)
    assert server is not None
    try:
        assert redis.Redis.from_url(url).config_get("io-threads")["io-threads"] == "2"
    finally:
        server.stop()
