"""Triton (the ``nvidia-pytriton`` wheel) as a peer of framepool in ``framepool bench peers``.

The server is a sandbox child, ``python -m benchmarks.peers_triton`` (the
:func:`serve` below): it loads :class:`~benchmarks.peers_model.ModelService`
and binds it with PyTriton as a Python model with dynamic batching (max batch
the bench's cap, 5 ms queue delay, as framepool's ``BATCH_TIMEOUT_MS``), one
model instance per replica; the JPEG goes in as a
BYTES input, and decode + preprocess + forward + postprocess run in the
``@batch`` infer function. Requests take Triton's path: tritonserver (HTTP or
gRPC) -> its Python backend stub -> PyTriton's proxy (ZeroMQ, shared memory) ->
the infer function in the child. The benchmark drives it with PyTriton's
``AsyncioModelClient`` (the asyncio flavour of its ``ModelClient``) over gRPC
and over HTTP, all ports free ones on 127.0.0.1, the workspace in the sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers_clients import AsyncBridge, Reply, kill_session
from benchmarks.peers_model import MODEL_ID, ModelService
from benchmarks.sandbox import Child, Sandbox
from framepool.redis_server import free_port

QUEUE_DELAY_US = 5000
_OUTPUTS = ("completed_at", "inference_ms", "postprocess_ms", "batch_size")  # per frame
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


def missing() -> str | None:
    """Why PyTriton cannot run here, or None."""
    try:
        import pytriton  # noqa: F401
        from pytriton.triton import Triton  # noqa: F401
    except ImportError:
        return NOT_INSTALLED
    except Exception as exc:  # a broken install says why
        return f"cannot be imported: {type(exc).__name__}: {exc}"
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        return (
            f"cannot run with numpy {np.__version__}: nvidia-pytriton {_version()} requires "
            "numpy<2, and with numpy 2 its Python backend stub misreads every BYTES input "
            "(deserialize_bytes_tensor reads a length of 185273099 from a 15-byte tensor, "
            "the stub dies: 'Stub process is not healthy'); `pip install -e '.[bench]'` "
            "resolves numpy 1.26"
        )
    return None


def _version() -> str:
    from importlib.metadata import version

    try:
        return version("nvidia-pytriton")
    except Exception:
        return "?"


def server_env(threads: int) -> dict[str, str]:
    """The child's environment.

    The Python backend stub links ``libpython3.X.so.1.0`` by name: without help
    the loader may pick the system's (here Debian's 3.11.2) while the stdlib is
    the running interpreter's (pyenv's 3.11.7), and the stub fails on its first
    import (``'_thread.RLock' object has no attribute '_recursion_count'``). The
    running interpreter's LIBDIR goes first on ``LD_LIBRARY_PATH``; the wheel's
    own bundled libraries follow (found beside the package, wherever it lives).
    """
    import pytriton

    paths = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        paths.append(str(libdir))
    paths.append(str(Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"))
    if os.environ.get("LD_LIBRARY_PATH"):
        paths.append(os.environ["LD_LIBRARY_PATH"])
    return {
        "LD_LIBRARY_PATH": ":".join(paths),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }


class TritonServer:
    """The PyTriton child and its ports."""

    def __init__(self, sb: Sandbox, models_root: str, device: str, threads: int, max_batch: int,
                 timeout: float = 180.0, instances: int = 1,
                 model_id: str = MODEL_ID) -> None:  # fmt: skip
        self.version = _version()
        self.model_id = model_id
        self.http_port, self.grpc_port = free_port(), free_port()
        argv = [sys.executable, "-m", "benchmarks.peers_triton", "--models-root", models_root]
        argv += ["--device", device, "--threads", str(threads), "--max-batch", str(max_batch)]
        argv += ["--instances", str(instances), "--model", model_id]
        argv += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        argv += ["--metrics-port", str(free_port()), "--workspace", str(sb.dir / "triton")]
        self.sb = sb
        self.child: Child = sb.spawn("triton", argv, server_env(threads))
        try:
            sb.wait_until(self._ready, timeout, f"Triton to serve {model_id}", [self.child])
        except BaseException:
            self.close()
            raise

    def port(self, protocol: str) -> int:
        return self.grpc_port if protocol == "grpc" else self.http_port

    def close(self) -> None:
        """The child's process group, then anything of its session left (tritonserver,
        the Python backend stub)."""
        with contextlib.suppress(Exception):
            self.sb.stop(self.child)
        kill_session(self.child.pid)

    def _ready(self) -> bool:
        import httpx

        url = f"http://127.0.0.1:{self.http_port}/v2/models/{self.model_id}/ready"
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


class TritonClient:
    """Frames through PyTriton's ``AsyncioModelClient`` (``grpc`` or ``http``)."""

    def __init__(self, protocol: str, port: int, model_id: str, jpegs: Sequence[bytes]) -> None:
        import warnings

        from pytriton.client import AsyncioModelClient

        # "tritonclient.grpc doesn't support timeout for other commands than infer": once
        # per client, in every client process; the inference timeout still holds
        warnings.filterwarnings("ignore", message="tritonclient.grpc doesn't support timeout")

        self.name = f"triton_{protocol}"
        url = f"{protocol}://127.0.0.1:{port}"
        self.jpegs = jpegs
        self.bridge = AsyncBridge()

        async def make() -> Any:
            return AsyncioModelClient(url, model_id, init_timeout_s=60.0, inference_timeout_s=120.0)

        self.client = self.bridge.call(make())

    @classmethod
    def of(cls, server: TritonServer, protocol: str, jpegs: Sequence[bytes]) -> TritonClient:
        return cls(protocol, server.port(protocol), server.model_id, jpegs)

    async def _infer(self, frame: bytes) -> dict[str, Any]:
        import numpy as np

        out = await self.client.infer_sample(frame=np.array([frame], dtype=np.object_))
        return {k: out[k][0] for k in _OUTPUTS}

    def submit(self, indices: Sequence[int]) -> list[Any]:
        k = len(self.jpegs)
        return [self.bridge.submit(self._infer(self.jpegs[i % k])) for i in indices]

    def get(self, handle: Any, timeout: float) -> Reply | None:
        value = self.bridge.result(handle, timeout)
        return None if value is None else Reply.from_dict(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bridge.call(self.client.close(), timeout=10)
        self.bridge.close()


# ------------------------------------------------------------------ the child
def serve(argv: Sequence[str] | None = None) -> None:
    """Load the model, bind it with PyTriton, serve until signalled."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers_triton")
    p.add_argument("--models-root", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--instances", type=int, default=1, help="model instances (threads)")
    p.add_argument("--model", default=MODEL_ID)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--workspace", required=True)
    args = p.parse_args(argv)

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    service = ModelService(args.models_root, args.device, args.threads, args.model)

    def make_infer() -> Any:  # one callable per model instance (PyTriton runs each in a thread)
        @batch
        def infer(frame: Any) -> dict[str, Any]:
            replies = service([row[0] for row in frame])

            def col(key: str, dtype: Any) -> Any:
                return np.array([[r[key]] for r in replies], dtype=dtype)

            return {
                "completed_at": col("completed_at", np.float64),
                "inference_ms": col("inference_ms", np.float64),
                "postprocess_ms": col("postprocess_ms", np.float64),
                "batch_size": col("batch_size", np.int32),
            }

        return infer

    infers = [make_infer() for _ in range(max(1, args.instances))]

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_metrics=False,
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        exit_timeout_secs=5,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=args.model,
            infer_func=infers if len(infers) > 1 else infers[0],
            inputs=[Tensor(name="frame", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="completed_at", dtype=np.float64, shape=(1,)),
                Tensor(name="inference_ms", dtype=np.float64, shape=(1,)),
                Tensor(name="postprocess_ms", dtype=np.float64, shape=(1,)),
                Tensor(name="batch_size", dtype=np.int32, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    serve()
