"""``framepool bench peers``'s clients, in process: how a missing Ray or PyTriton is
reported, the direct-call baseline's batching and replicas, the tight loop's
replicas, the asyncio bridge, and the closed/open drivers (``run_closed``,
``run_open``). Nothing here needs Ray or PyTriton installed."""

from __future__ import annotations

import sys
import threading
import time
import types
from typing import Any

import pytest

from benchmarks import peers_ray, peers_triton
from benchmarks.peers_clients import AsyncBridge, DirectPeer, Reply, run_closed, run_open
from framepool.settings import Settings
from tests.unit.peer_replies import _reply


# ------------------------------------------------------------------ peers missing
def test_missing_peers_are_reported_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in peers_ray.RAY_ENV:  # missing() sets them: put back whatever was there
        monkeypatch.setenv(key, "x")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "pytriton", None)
    assert peers_ray.missing() == "not installed (pip install -e '.[bench]')"
    assert peers_triton.missing() == "not installed (pip install -e '.[bench]')"


def test_pytriton_with_numpy_2_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    fake = types.ModuleType("pytriton")
    fake_triton = types.ModuleType("pytriton.triton")
    fake_triton.Triton = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pytriton", fake)
    monkeypatch.setitem(sys.modules, "pytriton.triton", fake_triton)
    monkeypatch.setattr(np, "__version__", "2.4.6")
    why = peers_triton.missing()
    assert why is not None and "numpy 2.4.6" in why and "numpy<2" in why
    monkeypatch.setattr(np, "__version__", "1.26.4")
    assert peers_triton.missing() is None


def test_triton_child_gets_this_interpreters_libpython_first() -> None:
    pytest.importorskip("pytriton")
    import sysconfig

    env = peers_triton.server_env(threads=2)
    paths = env["LD_LIBRARY_PATH"].split(":")
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        assert paths[0] == sysconfig.get_config_var("LIBDIR")
    assert any(p.endswith("nvidia_pytriton.libs") for p in paths)
    assert env["OMP_NUM_THREADS"] == "2"


# ------------------------------------------------------------------ in-process pieces
def test_direct_peer_runs_what_is_waiting_as_one_batch_without_waiting_for_more() -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[list[bytes]] = []

    def service(frames: list[bytes]) -> list[dict[str, Any]]:
        seen.append(list(frames))
        if len(seen) == 1:
            entered.set()
            assert release.wait(10)
        return [
            {"completed_at": time.time(), "inference_ms": 1.0, "batch_size": len(frames)}
            for _ in frames
        ]

    jpegs = [bytes([i]) for i in range(16)]
    peer = DirectPeer(service, jpegs, max_batch=4)
    try:
        first = peer.submit([0])
        assert entered.wait(10)
        rest = peer.submit(range(1, 7))  # six wait while the first runs
        release.set()
        replies = [peer.get(h, 10) for h in first + rest]
    finally:
        peer.close()
    assert seen == [[b"\x00"], [bytes([i]) for i in range(1, 5)], [b"\x05", b"\x06"]]
    assert [r.batch_size for r in replies if r is not None] == [1, 4, 4, 4, 4, 2, 2]


def test_direct_peer_replicas_run_their_batches_side_by_side() -> None:
    entered, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def service(frames: list[bytes]) -> list[dict[str, Any]]:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            entered.set()
            assert release.wait(10)
        return [
            {"completed_at": time.time(), "inference_ms": 1.0, "batch_size": len(frames)}
            for _ in frames
        ]

    peer = DirectPeer(service, [b"a", b"b"], max_batch=4, replicas=2)
    try:
        first = peer.submit([0])
        assert entered.wait(10)
        (second,) = peer.submit([1])  # the other model thread takes it meanwhile
        reply = peer.get(second, 10)
        assert reply is not None and reply.batch_size == 1
        release.set()
        assert peer.get(first[0], 10) is not None
    finally:
        peer.close()
    assert sorted(threads) == ["direct-model-0", "direct-model-1"]
    assert not any(t.is_alive() for t in peer.threads)  # close() ends every model thread


def test_the_tight_loop_shares_the_frames_and_torch_threads_among_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from benchmarks import pipeline_tight_loop as tl

    ran: dict[str, list[int]] = {}
    seen_threads: set[int] = set()
    models: set[str] = set()

    def runner(settings: Any, jpegs: Any, device: str = "cpu", model_id: str = "?") -> Any:
        models.add(model_id)

        def one_batch(start: int, count: int) -> None:
            ran.setdefault(threading.current_thread().name, []).append(count)
            seen_threads.add(torch.get_num_threads())

        return one_batch

    monkeypatch.setattr(tl, "_loop_model", lambda *args: None)
    monkeypatch.setattr(tl, "_batch_runner", runner)
    before = torch.get_num_threads()
    try:
        run = tl.tight_loop(Settings(), [b"x"], 21, 2, replicas=2)
        assert run.frames == 21 and run.steady_fps > 0
        # a warm-up batch of 8 each, then 11 and 10 frames in batches of up to 8
        assert ran == {"tight-loop-0": [8, 8, 3], "tight-loop-1": [8, 8, 2]}
        assert seen_threads == {1}  # 2 torch threads shared out among 2 loops
        assert models == {"resnet18"}
        ran.clear()
        run = tl.tight_loop(Settings(), [b"x"], 10, 2, model_id="noop", batch=4)
        assert ran == {"tight-loop-0": [4, 4, 4, 2]}  # warm-up, then 10 frames in 4s
        assert models == {"resnet18", "noop"}

        def broken(settings: Any, jpegs: Any, device: str = "cpu", model_id: str = "?") -> Any:
            raise RuntimeError("model broke")

        monkeypatch.setattr(tl, "_batch_runner", broken)
        with pytest.raises(RuntimeError, match="model broke"):
            tl.tight_loop(Settings(), [b"x"], 16, 2, replicas=2)
        with pytest.raises(ValueError, match="replicas"):
            tl.tight_loop(Settings(), [b"x"], 16, 2, replicas=0)
    finally:
        torch.set_num_threads(before)


def test_direct_peer_hands_a_model_failure_to_every_frame_of_the_batch() -> None:
    def service(frames: list[bytes]) -> list[dict[str, Any]]:
        raise RuntimeError("model broke")

    peer = DirectPeer(service, [b"x"], max_batch=8)
    try:
        (h,) = peer.submit([0])
        with pytest.raises(RuntimeError, match="model broke"):
            peer.get(h, 10)
    finally:
        peer.close()


def test_async_bridge_result_is_none_until_done() -> None:
    import asyncio

    bridge = AsyncBridge()
    try:

        async def slow() -> int:
            await asyncio.sleep(0.3)
            return 7

        fut = bridge.submit(slow())
        assert bridge.result(fut, 0.01) is None
        assert bridge.result(fut, 10) == 7
    finally:
        bridge.close()


class _EchoClient:
    """Replies at once; counts what it was sent."""

    name = "echo"

    def __init__(self) -> None:
        self.sent: list[int] = []

    def submit(self, indices: Any) -> list[Any]:
        self.sent.extend(indices)
        return [_reply(time.time() + i * 0.01, batch=1) for i in indices]

    def get(self, handle: Any, timeout: float) -> Reply | None:
        reply: Reply = handle
        return reply

    def close(self) -> None:
        pass


def test_drivers_send_every_frame_once_and_read_every_reply() -> None:
    c = _EchoClient()
    replies, wall = run_closed(c, 100, chunk=8)
    assert len(replies) == 100 and c.sent == list(range(100)) and wall >= 0
    c = _EchoClient()
    done, late = run_open(c, [0.0, 0.01, 0.02, 0.02, 0.05])
    assert [i for i, _, _ in done] == [0, 1, 2, 3, 4] and c.sent == [0, 1, 2, 3, 4]
    assert all(ms >= 0 for _, _, ms in done) and late >= 0
    sent = [r.sent_at for _, r, _ in done]
    assert all(t is not None for t in sent) and sent == sorted(sent)  # type: ignore[type-var]


@pytest.mark.parametrize("threaded", [False, True])
def test_the_limit_runs_the_chosen_model_at_the_chosen_batch(threaded: bool) -> None:
    """The direct call's closed loop: the tight loop, or (as on a GPU) bench gpu's loop
    with decode threads; both with the plan's model and batch cap."""
    from benchmarks.harness import test_frames
    from benchmarks.peers import Limit, Plan

    plan = Plan(64, 32, 1, 0.5, 4, (), 1, "cpu", 1, "noop", 4)
    limit = Limit(plan, test_frames(4), threaded=threaded)
    try:
        assert (limit.loop is not None) == threaded
        if threaded:
            assert (limit.loop.model.id, limit.loop.plan.batch) == ("noop", 4)
        stats = limit.run(24)
        if not threaded:
            from benchmarks.pipeline_tight_loop import _MODEL_CACHE

            assert "noop@cpu" in _MODEL_CACHE  # the plan's model, not resnet18
    finally:
        limit.close()
    assert stats["frames"] == 24 and stats["mean_batch_size"] == 4.0
    assert stats["steady_fps"] > 0 and stats["wall_fps"] > 0
    assert stats["cpu_ms_per_frame"]["client"] > 0 and stats["cpu_ms_per_frame"]["server"] == 0
