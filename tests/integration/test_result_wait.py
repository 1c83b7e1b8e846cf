"""FrameHandle.get through the producer's ResultListener, against a real Redis.

The results are written as workers write them (Celery's key and format, SET +
PUBLISH: ``workers.results.celery_result``)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest
import redis

from framepool import keys
from framepool.errors import ResultTimeout
from framepool.settings import Settings
from producer import FrameProducer
from producer.frame_handle import FrameHandle
from workers.results import celery_result


def publish(client: redis.Redis, job_id: str, **fields: object) -> None:
    result = {"job_id": job_id, "correlation_id": f"cid-{job_id}", "model_id": "m",
              "status": "ok", **fields}  # fmt: skip
    raw = celery_result(result)
    client.set(keys.celery_result(job_id), raw, ex=60)
    client.publish(keys.celery_result(job_id), raw)


def handle(p: FrameProducer, job_id: str) -> FrameHandle:
    meta = {"model_id": "m", "camera_id": None, "seq": None}
    return FrameHandle(p.app, job_id, f"cid-{job_id}", meta, None, p.results)


def test_a_short_timeout_is_kept_and_late_results_still_arrive(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    with FrameProducer(settings) as p:
        started = time.monotonic()
        with pytest.raises(ResultTimeout, match="within 0.05s"):
            handle(p, "never").get(timeout=0.05)
        # Celery's AsyncResult.get(timeout=0.05) takes a whole second here
        assert time.monotonic() - started < 0.9

        threading.Timer(0.2, publish, (client, "late")).start()
        got = handle(p, "late").get(timeout=10)
        assert got.job_id == "late" and got.correlation_id == "cid-late" and got.ok

        publish(client, "early")  # stored before anyone waits: read from the key
        assert handle(p, "early").get(timeout=1).job_id == "early"
        assert not p.results._waiting  # every subscription given back


def test_many_threads_each_get_their_own_result(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    ids = [f"job-{i}" for i in range(40)]
    with FrameProducer(settings) as p, ThreadPoolExecutor(40) as pool:
        futures = {j: pool.submit(handle(p, j).get, 20) for j in ids}
        time.sleep(0.3)  # most are waiting on their subscriptions by now
        for j in random.Random(3).sample(ids, len(ids)):
            publish(client, j, seq=int(j.split("-")[1]))
        for j, fut in futures.items():
            r = fut.result()
            assert r.job_id == j and r.seq == int(j.split("-")[1])


def test_reader_threads_share_the_producers_result_decoder(settings: Settings) -> None:
    """Celery's Redis backend is per thread (``app.backend`` makes one, with its own
    connection pool, in each thread that asks): ~2 ms on a reader thread's first
    result. The producer's handles decode with the backend it took once."""
    import numpy as np

    from framepool.codec import encode_jpeg

    client = redis.Redis.from_url(settings.redis_url)
    with FrameProducer(settings) as p:
        h = p.submit("noop", encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
        made: list[str] = []
        real = p.app._get_backend

        def spy() -> object:
            made.append(threading.current_thread().name)
            return real()

        p.app._get_backend = spy  # type: ignore[method-assign]
        publish(client, h.job_id)
        with ThreadPoolExecutor(2, thread_name_prefix="reader") as pool:  # new threads
            got = pool.submit(h.get, 10).result()
        assert got.job_id == h.job_id and got.ok
        assert made == []


def test_a_crashed_task_becomes_an_error_result(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    failure = {
        "status": "FAILURE",
        "result": {"exc_type": "RuntimeError", "exc_message": ["boom"], "exc_module": "builtins"},
        "traceback": "Traceback ...",
        "children": [],
        "date_done": "2030-01-01T00:00:00+00:00",
        "task_id": "crashed",
    }
    raw = msgpack.packb(failure, use_bin_type=True)
    with FrameProducer(settings) as p:
        threading.Timer(0.1, lambda: (client.set(keys.celery_result("crashed"), raw),
                                      client.publish(keys.celery_result("crashed"), raw))).start()  # fmt: skip
        r = handle(p, "crashed").get(timeout=10)
    assert r.status == "error" and r.error is not None
    assert r.error.type == "RuntimeError" and "boom" in r.error.message
