"""The model's own tight loop: the limit ``framepool bench pipeline`` (and peers) compare with.

resnet18's (or another model's) decode + preprocess + forward + postprocess in
one process, batch BATCH (or another cap), no queue in between.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.peers_model import FRAME_SIZE, MODEL_ID, on_device, prepare
from benchmarks.pipeline_clients import CpuMeter, Run
from benchmarks.pipeline_report import BATCH
from benchmarks.sandbox import BenchError
from framepool.settings import Settings


def tight_loop(
    settings: Settings, jpegs: Sequence[bytes], n: int, threads: int, device: str = "cpu",
    replicas: int = 1, model_id: str = MODEL_ID, batch: int = BATCH,
) -> Run:  # fmt: skip
    """``model_id``'s decode + preprocess + forward + postprocess in one process, batches
    of ``batch``.

    Threads as in the worker: the model is loaded and warmed up in the main
    thread (``WorkerRuntime.load``), and the loop runs in a thread of its own
    (the worker's model runner). This matters with torch's OpenMP build: the
    thread that first ran a parallel region owns the spinning thread team, and
    on this 2-core machine with anything else running, a forward pass from that
    thread is up to 3x slower than the same pass from any other thread.

    ``replicas`` > 1: that many loop threads share the ``n`` frames and the one
    loaded model, each with ``threads // replicas`` torch threads (at least 1), the
    layout of ``bench peers --replicas``, in one process. A thread takes torch's
    thread count when it first runs a parallel region, so each run starts new ones.
    """
    import torch

    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    torch.set_num_threads(max(1, threads // replicas))  # the worker gets OMP_NUM_THREADS
    _loop_model(settings, device, model_id)  # load + warm up here, in the main thread
    shares = [len(range(r, n, replicas)) for r in range(replicas)]  # frames per loop thread
    box: list[float | BaseException] = []
    clock: dict[str, Any] = {}

    def start_clock() -> None:  # once every loop is warm, before any goes on
        clock["meter"], clock["t0"] = CpuMeter({}), time.perf_counter()

    started = threading.Barrier(replicas + 1, action=start_clock)

    def target(share: int) -> None:
        try:
            one_batch = _batch_runner(settings, jpegs, device, model_id)
            one_batch(0, batch)  # warm-up
            started.wait()
            for start in range(0, share, batch):
                one_batch(start, min(batch, share - start))
            box.append(time.perf_counter())
        except BaseException as exc:  # re-raised in the caller
            box.append(exc)  # before the abort, so that it is the first error seen
            started.abort()

    loops = [threading.Thread(target=target, args=(share,), name=f"tight-loop-{i}", daemon=True)
             for i, share in enumerate(shares)]  # fmt: skip
    for t in loops:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a loop failed: see box
        started.wait()
    for t in loops:
        while t.is_alive():  # join with a timeout so Ctrl-C is seen
            t.join(0.2)
    errors = [x for x in box if isinstance(x, BaseException)]
    if errors:
        raise errors[0]
    if len(box) != replicas:
        raise BenchError("a tight loop thread ended without a result")
    wall = max(x for x in box if isinstance(x, float)) - clock["t0"]
    cpu = clock["meter"].per_frame_ms(n)
    cpu["loop"] = cpu.pop("producer")
    return Run(frames=n, steady_fps=n / wall, wall_fps=n / wall, cpu_ms_per_frame=cpu)


def _batch_runner(
    settings: Settings, jpegs: Sequence[bytes], device: str = "cpu", model_id: str = MODEL_ID
) -> Callable[[int, int], None]:
    """``one_batch(start, count)``: frames ``start``.. of ``jpegs`` through the model."""
    import torch

    model = _loop_model(settings, device, model_id)
    k = len(jpegs)

    def one_batch(start: int, count: int) -> None:
        inputs, sizes = [], []
        for i in range(start, start + count):
            inputs.append(prepare(model, jpegs[i % k], settings.max_frame_bytes,
                                  settings.max_frame_pixels))  # fmt: skip
            sizes.append(FRAME_SIZE)
        x = on_device(model, inputs)  # as the worker's runner does
        with torch.inference_mode():
            raw = model.infer(x)
            outputs = model.postprocess(raw, sizes)
        assert len(outputs) == count

    return one_batch


_MODEL_CACHE: dict[str, Any] = {}


def _loop_model(settings: Settings, device: str = "cpu", model_id: str = MODEL_ID) -> Any:
    from models.registry import load_model

    key = f"{model_id}@{device}"
    if key not in _MODEL_CACHE:
        model = load_model(settings.models_root, model_id, device)
        model.warmup(batch_size=1)  # as the worker does, in the loading thread
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]
