"""The worker processes ``framepool bench pipeline`` (and the other benchmarks) measure.

``framepool worker`` processes, started together and back once they all serve,
and the plain Celery baseline's worker (``benchmarks.plain_celery``), each a
child of the benchmark's :class:`~benchmarks.sandbox.Sandbox`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis

from benchmarks.pipeline_report import BATCH, CONCURRENCY
from benchmarks.sandbox import Child, Sandbox
from framepool import keys
from workers.heartbeat import serving


def _worker_env(sb: Sandbox, threads: int, batch: int = BATCH) -> dict[str, str]:
    return {
        "REDIS_URL": sb.redis_url,
        "MAX_BATCH_SIZE": str(batch),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }


def start_framepool_worker(
    sb: Sandbox, model_id: str, threads: int, device: str = "cpu", name: str | None = None,
    batch: int = BATCH, env: Mapping[str, str] | None = None, tree: Path | None = None,
) -> Child:  # fmt: skip
    return start_framepool_workers(sb, model_id, threads, device, [name or f"fp-{model_id}"],
                                   batch, env, tree)[0]  # fmt: skip


def start_framepool_workers(
    sb: Sandbox, model_id: str, threads: int, device: str, names: Sequence[str],
    batch: int = BATCH, env: Mapping[str, str] | None = None, tree: Path | None = None,
) -> list[Child]:  # fmt: skip
    """One ``framepool worker`` per name, started together; back when all serve.

    ``env`` is added to (and wins over) the workers' environment; ``tree`` runs them
    from another checkout of framepool (its root first on ``PYTHONPATH``, and as the
    working directory) instead of this one."""
    children = []
    extra = dict(env or {})
    if tree is not None:
        extra["PYTHONPATH"] = str(tree)
    for name in names:
        argv = [sys.executable, "-m", "framepool.cli", "worker", "--device", device]
        argv += ["--models", model_id, "--name", f"{name}@bench"]
        children.append(sb.spawn(name, argv, {**_worker_env(sb, threads, batch), **extra}, tree))
    client = redis.Redis.from_url(sb.redis_url)

    def ready() -> bool:  # these very workers consume (another may serve the model already)
        beats = client.mget([keys.worker_heartbeat(f"{name}@bench") for name in names])
        return all(serving(b) for b in beats)

    try:
        sb.wait_until(ready, 120, f"workers {', '.join(names)} to serve {model_id}", children)
    finally:
        client.close()
    return children


def start_plain_worker(
    sb: Sandbox, pool: str, queue: str, threads: int, concurrency: int = CONCURRENCY,
    env: dict[str, str] | None = None,
) -> Child:  # fmt: skip
    name = f"plain-{pool}"
    argv = [sys.executable, "-m", "celery", "-A", "benchmarks.plain_celery", "worker"]
    argv += ["-P", pool, "-Q", queue, "-n", f"{name}@bench", "-l", "WARNING"]
    # as framepool's worker: no mingle, no gossip, fair scheduling; events from the config
    argv += ["--without-mingle", "--without-gossip", "-O", "fair"]
    if pool != "solo":
        argv += ["-c", str(concurrency)]
    return sb.spawn(name, argv, {**_worker_env(sb, threads), **(env or {})})
