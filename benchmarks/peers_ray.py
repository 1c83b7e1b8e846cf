"""Ray Serve as a peer of framepool in ``framepool bench peers``.

A private single-node Ray cluster is started as a sandbox child (``ray start
--head --block``: 127.0.0.1, free ports, ``--num-cpus`` 2 or the replicas,
``--num-gpus`` 1 on a GPU, no dashboard, usage stats off, its temp dir inside
the sandbox), so it is stopped with the sandbox's other children whatever
happens. The benchmark process joins it as a driver and deploys one
application: a deployment whose ``infer`` method is decorated with
``@serve.batch(max_batch_size=<batch cap>, batch_wait_timeout_s=0.005)`` and
calls :class:`~benchmarks.peers_model.ModelService` directly in that method (not
in a thread: the forward pass blocks the replica's event loop, as in Ray's own
batching examples). It is driven two ways:

- *handle*: ``DeploymentHandle.infer.remote(jpeg)`` from the driver (or, with
  ``--clients``, from client processes that each join the cluster as a driver,
  :func:`handle_client`), results read with ``DeploymentResponse.result``;
- *HTTP*: ``POST /<model>`` with the JPEG as the body through Ray Serve's
  HTTP proxy, from a pool of ``httpx.AsyncClient`` of one connection each.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.peers_clients import AsyncBridge, Reply, kill_session
from benchmarks.peers_model import MODEL_ID
from benchmarks.sandbox import BenchError, Child, Sandbox
from framepool.redis_server import free_port

APP = "framepool-peers"
BATCH_WAIT_S = 0.005
#: no telemetry, nothing fetched, 127.0.0.1 only: Ray must not reach the network. On
#: Linux, Ray turns ``--node-ip-address=127.0.0.1`` into the host's routable address
#: (found by "connecting" a UDP socket to 8.8.8.8) unless multi-node clusters are off,
#: as they are by default on macOS and Windows: then every node address is 127.0.0.1.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_SERVE_ENABLE_TASK_EVENTS": "0",
}


def _use_ray_env() -> None:
    """RAY_ENV into this process's environment: before ``ray`` is first imported, since
    it reads some of them at import time (the driver must agree with the head)."""
    os.environ.update(RAY_ENV)


def missing() -> str | None:
    """Why Ray Serve cannot be used here, or None."""
    _use_ray_env()
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    return None


def _version() -> str:
    import ray

    return str(ray.__version__)


def loopback_replica_grpc() -> None:
    """In a replica: bind Serve's inter-deployment gRPC server to 127.0.0.1.

    Ray Serve 2.60 opens it on ``[::]:0`` (every interface) in
    ``Replica._on_initialized``, which runs after the deployment's ``__init__``,
    and has no setting for it; on a one-node 127.0.0.1 cluster nothing needs more
    than loopback. A no-op where Ray's internals differ.
    """
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "loopback_only", False):
        return

    def loopback(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return original(server, address)

    loopback.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback


def build_app(models_root: str, device: str, threads: int, max_batch: int, max_ongoing: int,
              replicas: int = 1, model_id: str = MODEL_ID) -> Any:  # fmt: skip
    """The Serve application (bound, not yet running). On a GPU the replicas share it:
    ``num_gpus`` 1 / replicas each, and Ray sets each one's ``CUDA_VISIBLE_DEVICES``."""
    from ray import serve

    gpus = 1.0 / replicas if device.startswith("cuda") else 0

    @serve.deployment(
        name="Model",
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,  # >= the batch cap, or batches never fill
        ray_actor_options={
            "num_cpus": 1,
            "num_gpus": gpus,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}},
        },
    )
    class Model:
        def __init__(self) -> None:
            from benchmarks.peers_model import ModelService

            loopback_replica_grpc()

            self.service = ModelService(models_root, "cuda:0" if gpus else "cpu", threads,
                                        model_id)  # fmt: skip

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=BATCH_WAIT_S)
        async def infer(self, frames: list[bytes]) -> list[dict[str, Any]]:
            return self.service(frames)

        async def __call__(self, request: Any) -> dict[str, Any]:
            return await self.infer(await request.body())

    return Model.bind()  # type: ignore[attr-defined]


class RayServe:
    """The cluster, the application and its two clients' plumbing."""

    def __init__(self, sb: Sandbox, models_root: str, device: str, threads: int, max_batch: int,
                 max_ongoing: int, replicas: int = 1, model_id: str = MODEL_ID) -> None:  # fmt: skip
        import logging

        _use_ray_env()  # the driver (this process) reads them too
        self.version = _version()
        self.gcs_port = free_port()
        self.http_port = free_port()
        self.sb = sb
        self.route = f"/{model_id}"
        self.url = f"http://127.0.0.1:{self.http_port}{self.route}"
        self.head = self._start_head(sb, cpus=max(2, replicas), gpus=device.startswith("cuda"))
        try:
            import ray
            from ray import serve

            for name in ("ray", "ray.serve"):  # Serve's INFO lines would interleave with ours
                logging.getLogger(name).setLevel(logging.WARNING)
            sb.wait_until(lambda: _listening(self.gcs_port), 120, "Ray's GCS", [self.head])
            ray.init(
                address=f"127.0.0.1:{self.gcs_port}",
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
            serve.start(http_options={"host": "127.0.0.1", "port": self.http_port})
            app = build_app(models_root, device, threads, max_batch, max_ongoing, replicas,
                            model_id)  # fmt: skip
            self.handle = serve.run(app, name=APP, route_prefix=self.route, blocking=False)
        except BaseException:
            self.close()
            raise

    def _start_head(self, sb: Sandbox, cpus: int, gpus: bool) -> Child:
        temp = sb.dir / "ray"
        temp.mkdir(exist_ok=True)
        ports = {
            "--port": self.gcs_port,
            "--ray-client-server-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--metrics-export-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--dashboard-port": free_port(),  # a minimal head runs even without the dashboard
        }
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
        argv += ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", f"--num-gpus={int(gpus)}"]
        argv += ["--include-dashboard=false"]
        argv += ["--dashboard-host=127.0.0.1"]
        argv += [f"--temp-dir={temp}", "--disable-usage-stats", "--log-style=record"]
        argv += [f"{k}={v}" for k, v in ports.items()]
        return sb.spawn("ray-head", argv, RAY_ENV)

    def close(self) -> None:
        """The driver's connection down, then the private cluster (Serve with it)."""
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        with contextlib.suppress(Exception):
            self.sb.stop(self.head)
        kill_session(self.head.pid)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class RayHandleClient:
    """Frames through a ``DeploymentHandle`` (its driver's own router)."""

    name = "ray_handle"

    def __init__(self, handle: Any, jpegs: Sequence[bytes], own_driver: bool = False) -> None:
        self.handle = handle
        self.jpegs = jpegs
        self.own_driver = own_driver  # this client connected its process to the cluster

    def submit(self, indices: Sequence[int]) -> list[Any]:
        k = len(self.jpegs)
        return [self.handle.infer.remote(self.jpegs[i % k]) for i in indices]

    def get(self, handle: Any, timeout: float) -> Reply | None:
        try:
            value = handle.result(timeout_s=timeout)
        except TimeoutError:
            return None
        return Reply.from_dict(value)

    def close(self) -> None:
        if self.own_driver:
            with contextlib.suppress(Exception):
                import ray

                ray.shutdown()


def handle_client(gcs_port: int, jpegs: Sequence[bytes]) -> RayHandleClient:
    """In a client process: join the cluster as a driver of its own, take the app's
    handle (``bench peers --clients``)."""
    import logging

    _use_ray_env()  # before ray's import, which reads some of them

    import ray
    from ray import serve

    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ray.init(address=f"127.0.0.1:{gcs_port}", logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    return RayHandleClient(serve.get_app_handle(APP), jpegs, own_driver=True)


def http_client(url: str, concurrency: int, jpegs: Sequence[bytes]) -> RayHttpClient:
    return RayHttpClient(url, jpegs, concurrency)


class RayHttpClient:
    """Frames ``POST``ed to Ray Serve's HTTP proxy (JPEG body, JSON reply).

    ``concurrency`` clients of one connection each, a request taking whichever is
    idle: one ``httpx.AsyncClient`` with that many connections costs CPU per request
    in proportion to them (encode/httpx#3215), 17 ms a frame at 64 here, taken from
    the cores Ray's replicas run on (docs/benchmarks.md, "Ray over HTTP: the bench's
    own client held it back")."""

    name = "ray_http"

    def __init__(self, url: str, jpegs: Sequence[bytes], concurrency: int) -> None:
        import asyncio

        import httpx

        self.url = url
        self.jpegs = jpegs
        self.bridge = AsyncBridge()

        async def make() -> tuple[list[Any], asyncio.Queue[Any]]:
            one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            clients = [httpx.AsyncClient(limits=one, timeout=120.0) for _ in range(concurrency)]
            # last in, first out: at a low rate the same few connections stay warm,
            # and the others idle long enough to expire on the client's side first
            idle: asyncio.Queue[Any] = asyncio.LifoQueue()
            for c in clients:
                idle.put_nowait(c)
            return clients, idle

        self.clients, self.idle = self.bridge.call(make())

    async def _post(self, frame: bytes) -> dict[str, Any]:
        client = await self.idle.get()
        try:
            resp = await client.post(self.url, content=frame)
        finally:
            self.idle.put_nowait(client)
        if resp.status_code != 200:
            raise BenchError(f"Ray Serve HTTP {resp.status_code}: {resp.text[:200]}")
        return dict(resp.json())

    def submit(self, indices: Sequence[int]) -> list[Any]:
        k = len(self.jpegs)
        return [self.bridge.submit(self._post(self.jpegs[i % k])) for i in indices]

    def get(self, handle: Any, timeout: float) -> Reply | None:
        value = self.bridge.result(handle, timeout)
        return None if value is None else Reply.from_dict(value)

    def close(self) -> None:
        import asyncio

        async def close_all() -> None:
            await asyncio.gather(*(c.aclose() for c in self.clients), return_exceptions=True)

        with contextlib.suppress(Exception):
            self.bridge.call(close_all())
        self.bridge.close()
