"""Flower (``framepool flower``) as a real process over real HTTP.

A real Redis, a real ``shape_detector`` worker and frames from the SDK: with
basic auth, Flower's API lists the worker and every frame task, whose args show
model, camera, seq and correlation id, with runtime and worker; missing or
wrong credentials get 401. Without credentials the command refuses to start.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from framepool import keys
from framepool.redis_server import free_port
from framepool.settings import Settings
from producer import FrameProducer
from tests.services import ServiceProcess, run_cli
from tests.unit.test_codec import jpeg

ROOT = Path(__file__).resolve().parents[2]
MODEL = "shape_detector"
USER, PASSWORD = "ops", "flower:test-pw"  # a ':' inside the password is allowed
WORKER = f"flowertest-1@{socket.gethostname()}"
T = TypeVar("T")


class Flower(ServiceProcess):
    def __init__(
        self, redis_url: str, log_path: Path, args: tuple[str, ...] = (), **env: str
    ) -> None:
        super().__init__(
            "flower",
            {
                "REDIS_URL": redis_url,
                "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD},viewer:second-pw",
                "LOG_FORMAT": "json",
                **env,
            },
            log_path,
            ready_path="/healthcheck",  # the one route Flower serves without auth
            args=args,
        )

    def get(self, path: str, auth: Any = (USER, PASSWORD), **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=auth, timeout=30, **kw)

    def get_json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return r.json()


@pytest.fixture()
def start_flower(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    started: list[Flower] = []

    def _start(args: tuple[str, ...] = (), **env: str) -> Flower:
        f = Flower(redis_url, tmp_path / f"flower-{len(started)}.log", args, **env)
        started.append(f)
        return f

    yield _start
    for f in started:
        f.stop()


def poll(fn: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Call ``fn`` until it returns something truthy; fail with its last value at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {timeout:g}s; last: {last!r}")


def test_flower_lists_the_worker_and_every_frame_task(
    settings: Settings, start_worker: Any, start_flower: Callable[..., Flower]
) -> None:
    start_worker([MODEL], extra=["--name", WORKER])
    flower = start_flower()
    # Flower's event receiver is live once the worker's heartbeat events reach it.
    poll(lambda: flower.get_json("/api/workers?status=true").get(WORKER), "worker via events")

    workers = flower.get_json("/api/workers?refresh=true")
    assert WORKER in workers, list(workers)
    queues = [q["name"] for q in workers[WORKER]["active_queues"]]
    assert keys.queue_name(MODEL) in queues

    with FrameProducer(settings) as producer:
        handles = [
            producer.submit(
                MODEL,
                jpeg(64, 48, value=40 * seq),
                camera_id="cam-flower",
                seq=seq,
                correlation_id=f"flower-cid-{seq}",
            )
            for seq in range(3)
        ]
        for h in handles:
            assert h.get(timeout=60).status == "ok"
    ids = {h.job_id: seq for seq, h in enumerate(handles)}

    def done() -> dict[str, Any] | None:
        tasks = flower.get_json(f"/api/tasks?taskname={keys.INFER_TASK}")
        ok = {i: t for i, t in tasks.items() if i in ids and t["state"] == "SUCCESS"}
        return ok if len(ok) == len(ids) else None

    tasks = poll(done, "frame tasks in SUCCESS")
    for job_id, seq in ids.items():
        t = tasks[job_id]
        assert re.fullmatch(
            rf"frame<jpeg \d+KB 64x48> model={MODEL} cam=cam-flower seq={seq} cid=flower-cid-{seq}",
            t["args"],
        ), t["args"]
        assert t["kwargs"] == "{}"
        assert t["name"] == keys.INFER_TASK
        assert t["worker"] == WORKER
        assert isinstance(t["runtime"], float) and t["runtime"] > 0

    # Flower's search finds a frame by its correlation id.
    found = flower.get_json("/api/tasks?search=flower-cid-1")
    assert list(found) == [handles[1].job_id]


@pytest.mark.parametrize(
    "auth",
    [None, (USER, "wrong-pw"), ("nobody", PASSWORD), (USER, PASSWORD.split(":")[0])],
    ids=["none", "wrong-password", "wrong-user", "truncated-password"],
)
def test_flower_refuses_missing_or_wrong_credentials(
    start_flower: Callable[..., Flower], auth: tuple[str, str] | None
) -> None:
    flower = start_flower()
    for path in ("/api/workers", "/api/tasks", "/"):
        assert flower.get(path, auth=auth).status_code == 401, path
    assert (
        flower.get("/api/tasks", headers={"Authorization": "Bearer x"}, auth=None).status_code
        == 401
    )
    # Both configured users get in.
    assert flower.get("/api/tasks").status_code == 200
    assert flower.get("/api/tasks", auth=("viewer", "second-pw")).status_code == 200


def _flower_cli(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # a command that wrongly starts Flower runs until the timeout kills it
    env = {"REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": "", **env}
    return run_cli("flower", *args, env=env, timeout=60)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "Flower needs credentials: set FLOWER_BASIC_AUTH"),
        ((), {"FLOWER_BASIC_AUTH": "admin"}, "entry 1 has no ':'"),
        (
            (),
            {"FLOWER_BASIC_AUTH": "admin:secret-pw,bob:"},
            "entry 2 has an empty user or password",
        ),
        (("--no-auth",), {"FLOWER_BASIC_AUTH": "admin:secret-pw"}, "--no-auth given but"),
    ],
    ids=["no-credentials", "no-colon", "empty-password", "no-auth-with-credentials"],
)
def test_flower_cli_refuses_to_start_without_valid_credentials(
    redis_url: str, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    r = _flower_cli(redis_url, *args, **env)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert message in r.stderr
    assert "secret-pw" not in r.stderr  # a password is never echoed
    assert "Traceback" not in r.stderr


def test_flower_cli_exits_3_when_redis_is_unreachable() -> None:
    r = _flower_cli(f"redis://127.0.0.1:{free_port()}/0", FLOWER_BASIC_AUTH="ops:pw")
    assert r.returncode == 3, (r.returncode, r.stderr[-500:])
    assert "Redis unreachable" in r.stderr


def test_flower_no_auth_serves_the_ui_open_and_keeps_the_api_closed(
    start_flower: Callable[..., Flower],
) -> None:
    # Flower itself refuses its API without auth unless FLOWER_UNAUTHENTICATED_API is set.
    flower = start_flower(("--no-auth",), FLOWER_BASIC_AUTH="")
    assert flower.get("/", auth=None).status_code == 200
    assert flower.get("/api/tasks", auth=None).status_code == 401
