"""workers.frame_pool.FramePool: frame tasks run without Celery's trace, and Celery's
callbacks are answered as a traced task would answer them."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from celery.exceptions import Reject
from kombu.serialization import dumps

from framepool import keys
from framepool.errors import DeviceLost
from workers.frame_pool import FramePool


class IdleRunner:
    """A model's runner with nothing to do: it runs a frame's intake on its thread."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def run_here(self, intake: Any) -> bool:
        def run() -> None:
            self.threads.append(threading.current_thread().name)
            intake()

        threading.Thread(target=run, name="runner-noop").start()
        return True


class BusyRunner:
    def run_here(self, intake: Any) -> bool:
        return False


class FakeRuntime:
    name = "w1"

    def __init__(self) -> None:
        self.runners: dict[str, Any] = {}
        self.started: list[tuple[str, str, Any, bool]] = []
        self.threads: list[str] = []  # the thread that started each frame
        self.futures: dict[str, Future[dict[str, Any]]] = {}
        self.written: set[str] = set()
        self.raises: BaseException | None = None

    def start_frame(self, job_id: str, cid: str, frame: Any, meta: Any,
                    redelivered: bool = False) -> Future[dict[str, Any]]:  # fmt: skip
        if self.raises is not None:
            raise self.raises
        self.started.append((job_id, cid, meta, redelivered))
        self.threads.append(threading.current_thread().name)
        fut: Future[dict[str, Any]] = Future()
        self.futures[job_id] = fut
        return fut

    def already_written(self, job_id: str) -> bool:
        return job_id in self.written

    def count_duplicate(self, model_id: str) -> None:
        pass


def _result(job_id: str, cid: str) -> dict[str, Any]:
    return {"job_id": job_id, "correlation_id": cid, "model_id": "noop", "status": "ok",
            "batch_size": 4, "timings_ms": {"total": 12.5}, "error": None}  # fmt: skip


def _args(job_id: str, cid: str = "cam1:7", task: str = keys.INFER_TASK,
          redelivered: bool = False) -> tuple[Any, ...]:  # fmt: skip
    ctype, enc, body = dumps(((None, {"model_id": "noop"}), {}, {}), serializer="msgpack")
    info = {"redelivered": redelivered, "routing_key": keys.queue_name("noop")}
    request = {"correlation_id": cid, "delivery_info": info}
    return (task, job_id, request, body, ctype, enc)


class Calls:
    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.done: list[tuple[int, Any, float]] = []
        self.event = threading.Event()

    def accept(self, pid: int, t: float) -> None:
        self.accepted.append(pid)

    def callback(self, value: tuple[int, Any, float]) -> None:
        self.done.append(value)
        self.event.set()


@pytest.fixture
def pool() -> Any:
    runtime = FakeRuntime()
    handed: list[list[str]] = []
    draining = threading.Event()
    cls = FramePool.serving(runtime, draining.is_set, handed.append)  # type: ignore[arg-type]
    p = cls(limit=4)
    p.fake, p.handed, p.drain_flag = runtime, handed, draining
    yield p
    p.executor.shutdown(wait=False, cancel_futures=True)


def _exc(einfo: Any) -> BaseException:
    """The exception of an ExceptionInfo (billiard wraps it with its traceback, and
    Celery's request unwraps it the same way)."""
    exc = einfo.exception
    return getattr(exc, "exc", exc)


def _wait(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_frame_is_answered_when_its_result_is_written(pool: Any) -> None:
    c = Calls()
    pool.on_apply(None, _args("j1"), callback=c.callback, accept_callback=c.accept)
    assert c.accepted  # task-started at once, on the consumer's thread
    _wait(lambda: "j1" in pool.fake.futures)
    assert pool.fake.started == [("j1", "cam1:7", {"model_id": "noop"}, False)]
    assert not c.done and pool._frames == 1  # no thread waits for the batch meanwhile
    pool.fake.futures["j1"].set_result(_result("j1", "cam1:7"))
    assert c.event.wait(5)
    failed, line, runtime = c.done[0]
    assert failed == 0 and line == "ok model=noop batch=4 total=12.5ms cid=cam1:7"
    assert runtime >= 0 and pool._frames == 0


def test_a_frame_handed_back_is_rejected_with_requeue(pool: Any) -> None:
    c = Calls()
    pool.on_apply(None, _args("j2"), callback=c.callback, accept_callback=c.accept)
    _wait(lambda: "j2" in pool.fake.futures)
    pool.fake.futures["j2"].set_exception(DeviceLost("gone"))
    assert c.event.wait(5)
    failed, einfo, _ = c.done[0]
    exc = _exc(einfo)
    assert failed == 1 and isinstance(exc, Reject) and exc.requeue
    assert pool._frames == 0


def test_a_frame_that_arrives_while_draining_goes_straight_back(pool: Any) -> None:
    pool.drain_flag.set()
    c = Calls()
    pool.on_apply(None, _args("j3"), callback=c.callback, accept_callback=c.accept)
    assert c.event.wait(5)
    assert pool.handed == [["j3"]] and not pool.fake.started
    assert isinstance(_exc(c.done[0][1]), Reject)


def test_an_unexpected_error_fails_the_task(pool: Any) -> None:
    pool.fake.raises = ValueError("boom")
    c = Calls()
    pool.on_apply(None, _args("j4"), callback=c.callback, accept_callback=c.accept)
    assert c.event.wait(5)
    failed, einfo, _ = c.done[0]
    assert failed == 1 and isinstance(_exc(einfo), ValueError) and pool._frames == 0


def test_other_tasks_run_in_celerys_threads(pool: Any) -> None:
    ran = threading.Event()
    c = Calls()
    pool.on_apply(lambda *a: ran.set(), ("other.task", 1), callback=c.callback,
                  accept_callback=c.accept)  # fmt: skip
    assert ran.wait(5) and not pool.fake.started


def test_stopping_waits_for_the_frames_in_a_batch(pool: Any) -> None:
    c = Calls()
    pool.on_apply(None, _args("j5"), callback=c.callback, accept_callback=c.accept)
    _wait(lambda: "j5" in pool.fake.futures)
    stopped = threading.Event()
    threading.Thread(target=lambda: (pool.on_stop(), stopped.set()), daemon=True).start()
    assert not stopped.wait(0.3)  # the frame's batch is still running
    pool.fake.futures["j5"].set_result(_result("j5", "cam1:7"))
    assert stopped.wait(5) and c.done[0][0] == 0


def test_a_redelivered_frame_already_written_is_answered_from_the_store(pool: Any) -> None:
    from types import SimpleNamespace

    pool.fake.written.add("j6")
    pool.app = SimpleNamespace(
        AsyncResult=lambda job_id: SimpleNamespace(result=_result(job_id, "c"))
    )
    c = Calls()
    pool.on_apply(
        None, _args("j6", redelivered=True), callback=c.callback, accept_callback=c.accept
    )
    assert c.event.wait(5)
    assert c.done[0][0] == 0 and "cid=c" in c.done[0][1]
    assert not pool.fake.started  # not run a second time


def test_an_idle_models_runner_takes_the_frames_intake_itself(pool: Any) -> None:
    runner = pool.fake.runners["noop"] = IdleRunner()
    c = Calls()
    applied = pool.on_apply(None, _args("j9"), callback=c.callback, accept_callback=c.accept)
    _wait(lambda: "j9" in pool.fake.futures)
    assert runner.threads == ["runner-noop"]  # no pool thread woken for it
    assert pool.fake.threads == ["runner-noop"]
    applied.wait(5)
    assert applied.f.done()  # the pool's record of the call is complete
    pool.fake.futures["j9"].set_result(_result("j9", "cam1:7"))
    assert c.event.wait(5) and c.done[0][0] == 0
    assert pool._frames == 0


def test_a_busy_runner_leaves_the_intake_to_a_pool_thread(pool: Any) -> None:
    pool.fake.runners["noop"] = BusyRunner()
    c = Calls()
    pool.on_apply(None, _args("j10"), callback=c.callback, accept_callback=c.accept)
    _wait(lambda: "j10" in pool.fake.futures)
    assert pool.fake.started[0][0] == "j10"
    [thread] = pool.fake.threads  # one of Celery's pool threads, beside the busy model
    assert thread.startswith("ThreadPoolExecutor") and thread != threading.current_thread().name
    pool.fake.futures["j10"].set_result(_result("j10", "cam1:7"))
    assert c.event.wait(5) and c.done[0][0] == 0


def test_the_model_of_a_message_is_its_queues() -> None:
    from workers.frame_pool import _model_of

    assert _model_of({"delivery_info": {"routing_key": keys.queue_name("resnet18")}}) == "resnet18"
    assert _model_of({"delivery_info": {"routing_key": "celery"}}) is None
    assert _model_of({"delivery_info": None}) is None
    assert _model_of({}) is None
