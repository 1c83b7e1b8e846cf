"""Every test under tests/gpu is marked ``gpu`` and skipped unless torch sees CUDA.

Also: a worker-process factory that starts ``framepool worker --device cuda:N``
(the shared ``start_worker`` fixture always passes ``--device cpu``), and CUDA
memory returned to the driver after each test, so one test's cache does not
squeeze the next.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, WorkerProcess

HERE = Path(__file__).resolve().parent
CUDA = torch.cuda.is_available()
NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False"


@pytest.hookimpl(tryfirst=True)  # before -m selection, so `-m gpu` / `-m "not gpu"` see the mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not CUDA:
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture(autouse=True)
def _release_cuda_memory() -> Iterator[None]:
    yield
    gc.collect()
    torch.cuda.empty_cache()


class GpuWorkerProcess(WorkerProcess):
    """:class:`WorkerProcess` started on ``device`` (``cuda:N``) instead of ``cpu``."""

    def __init__(
        self,
        env: dict[str, str],
        models: list[str],
        log_path: Path,
        device: str,
        extra: list[str] | None = None,
    ) -> None:
        # The base class's __init__ starts the process with --device cpu; so not called.
        self.log_path = log_path
        self.models = models
        self._log = log_path.open("wb")
        argv = ["worker", "--device", device, "--models", ",".join(models), *(extra or [])]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framepool.cli", *argv],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )


@pytest.fixture()
def start_gpu_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``start_gpu_worker(["resnet18"], device="cuda:0")`` → a ready worker."""
    started: list[WorkerProcess] = []

    def _start(
        models: list[str], *, device: str = "cuda:0", extra: list[str] | None = None, **env: str
    ) -> WorkerProcess:
        full_env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        log_path = tmp_path / f"gpu-worker-{len(started)}.log"
        w = GpuWorkerProcess(full_env, models, log_path, device, extra)
        started.append(w)
        w.wait_ready(redis_url, timeout=180.0)
        return w

    yield _start
    for w in started:
        w.stop()
