"""Several hosts, one Redis: workers anywhere serve one queue; one monitor sees them all.

Two worker "hosts" are two network namespaces with addresses of their own on a
bridge (``ip netns``, a veth pair each), each worker in a UTS namespace of its own
with its own hostname (``unshare --uts``), so its heartbeat says ``host-a`` or
``host-b`` as on two machines. Redis runs in the root namespace, bound to the
bridge's address only, so the workers reach it over the bridge as they would over
a network. All of it is created by the test and removed afterwards; where
namespaces cannot be made (not root, no iproute2) that test is skipped, and a
weaker one runs instead: two workers named for two hosts against the tests' Redis.

Shown: frames from one producer are answered by both hosts (their results'
``worker``), and the monitor's ``/api/v1/workers`` lists both hosts' workers
(``/api/v1/scaling`` counts both as consuming the model). GPU series of different
hosts stay apart by ``<hostname>/<uuid>``: tests/unit/test_cluster.py
(``test_same_uuid_on_two_hosts_is_two_devices``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import httpx
import pytest
import redis

from framepool import codec, keys
from framepool.redis_server import EmbeddedRedis
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from tests.faults import wait_for
from tests.services import ServiceProcess
from tests.system_packages import ensure_binary
from workers.heartbeat import serving

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "multihost-token"
MODEL = "noop"
FRAMES = 40
TAG = f"fp{os.getpid() % 100000}"  # interface and namespace names (15 characters at most)
SUBNET = f"10.231.{os.getpid() % 250}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@lru_cache(maxsize=1)
def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be used here (``None``: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        ensure_binary("ip", "iproute2")
        ensure_binary("unshare", "util-linux")
    except pytest.skip.Exception as exc:
        return str(exc)
    probe = f"{TAG}probe"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"cannot create a network namespace: {detail.strip()}"
    return None


class Network:
    """A bridge at ``<SUBNET>.1`` and one namespace per host at ``.2``, ``.3``, ..."""

    def __init__(self, hosts: list[str]) -> None:
        self.bridge = f"{TAG}br"
        self.gateway = f"{SUBNET}.1"
        self.namespaces = {h: f"{TAG}{h}" for h in hosts}
        self.made: list[tuple[str, str]] = []

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", "name", self.bridge, "type", "bridge")
            self.made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, ns in enumerate(self.namespaces.values(), start=2):
                outside, inside = f"{TAG}v{i}", f"{TAG}p{i}"
                _ip("netns", "add", ns)
                self.made.append(("netns", ns))
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self.made.append(("link", outside))
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("link", "set", inside, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for kind, name in reversed(self.made):
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _ip(kind, "del", name)
        self.made.clear()

    def run(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` inside ``host``'s namespace, with ``host`` as its hostname."""
        ns = self.namespaces[host]
        rename = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", rename, host, *argv]


class Worker:
    """``framepool worker`` (its own session, so it can be stopped as a group)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def worker_argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "framepool.cli", "worker", "--device", "cpu"] + [
        "--models",
        MODEL,
        *extra,
    ]


def worker_env(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "HEARTBEAT_INTERVAL_SECONDS": "1",
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def workers(specs: list[tuple[list[str], Path]], redis_url: str) -> Iterator[list[Worker]]:
    started = [Worker(argv, worker_env(redis_url), log) for argv, log in specs]
    try:
        yield started
    finally:
        for w in started:
            w.stop()


def answered_by(redis_url: str, names: set[str]) -> set[str]:
    """Wait for both workers' heartbeats, send FRAMES frames, return who answered them."""
    client = redis.Redis.from_url(redis_url)

    def both_ready() -> bool:
        beats = [client.get(keys.worker_heartbeat(n)) for n in names]
        return all(serving(b) for b in beats)

    wait_for(both_ready, timeout=120)
    frame = codec.encode_jpeg(SyntheticCamera("multi", 640, 480, fps=10, seed=5).frame(0).image)
    with FrameProducer(Settings(redis_url=redis_url)) as producer:
        handles = []
        for seq in range(FRAMES):  # paced, as a camera sends them
            handles.append(producer.submit(MODEL, frame, camera_id="multi", seq=seq))
            time.sleep(0.02)
        results = [h.get(timeout=60) for h in handles]
    client.close()
    assert all(r.ok for r in results)
    return {r.worker for r in results}


def monitor_view(redis_url: str, tmp: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The monitor's workers (name -> hostname) and scaling (model -> current workers)."""
    env = {"REDIS_URL": redis_url, "API_TOKEN": TOKEN, "MONITOR_POLL_INTERVAL_SECONDS": "0.2"}
    monitor = ServiceProcess("monitor", env, tmp / "monitor.log", ready_path="/ready")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        listed = httpx.get(f"{monitor.url}/api/v1/workers", headers=auth, timeout=10).json()
        scaling = httpx.get(f"{monitor.url}/api/v1/scaling", headers=auth, timeout=10).json()
    finally:
        monitor.stop()
    hosts = {w["name"]: w["hostname"] for w in listed["workers"]}
    current = {m["model_id"]: m["current_workers"] for m in scaling["models"]}
    return hosts, current


def test_two_hosts_in_network_namespaces_share_one_redis(tmp_path: Path) -> None:
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"{why}; test_two_named_hosts_on_one_machine covers the naming")
    names = {"cpu-1@host-a", "cpu-1@host-b"}
    with Network(["host-a", "host-b"]) as net:
        server = EmbeddedRedis(tmp_path / "redis", password="multi-secret", host=net.gateway)
        server.start()
        try:
            specs = [(net.run(h, worker_argv()), tmp_path / f"{h}.log") for h in net.namespaces]
            with workers(specs, server.url):
                assert answered_by(server.url, names) == names
                hosts, current = monitor_view(server.url, tmp_path)
        finally:
            server.stop()
    assert hosts == {"cpu-1@host-a": "host-a", "cpu-1@host-b": "host-b"}
    assert current[MODEL] == 2


def test_two_named_hosts_on_one_machine(redis_url: str, tmp_path: Path) -> None:
    if namespaces_unavailable() is None:
        pytest.skip("network namespaces work here: the namespace test covers this and more")
    names = {"cpu-1@host-a", "cpu-1@host-b"}
    specs = [(worker_argv("--name", n), tmp_path / f"{n}.log") for n in sorted(names)]
    with workers(specs, redis_url):
        assert answered_by(redis_url, names) == names
        hosts, current = monitor_view(redis_url, tmp_path)
    assert set(hosts) == names
    assert current[MODEL] == 2
