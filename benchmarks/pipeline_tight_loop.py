"""The model's own tight loop: the limit ``framepool bench pipeline`` (and peers) compare with.

resnet18's decode + preprocess + forward + postprocess in one process, batch
BATCH, no queue in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.pipeline_clients import CpuMeter, Run
from benchmarks.pipeline_report import BATCH
from benchmarks.sandbox import BenchError
from framepool.settings import Settings


def tight_loop(
    settings: Settings, jpegs: Sequence[bytes], n: int, threads: int, device: str = "cpu"
) -> Run:
    """resnet18's decode + preprocess + forward + postprocess in one process, batch BATCH.

    Threads as in the worker: the model is loaded and warmed up in the main
    thread (``WorkerRuntime.load``), and the loop runs in a thread of its own
    (the worker's model runner). This matters with torch's OpenMP build: the
    thread that first ran a parallel region owns the spinning thread team, and
    on this 2-core machine with anything else running, a forward pass from that
    thread is up to 3x slower than the same pass from any other thread.
    """
    import torch

    torch.set_num_threads(threads)  # the worker gets OMP_NUM_THREADS=threads
    _loop_model(settings, device)  # load + warm up here, in the main thread
    box: list[Run | BaseException] = []

    def target() -> None:
        try:
            box.append(_tight_loop(settings, jpegs, n, threads, device))
        except BaseException as exc:  # re-raised in the caller
            box.append(exc)

    thread = threading.Thread(target=target, name="tight-loop", daemon=True)
    thread.start()
    while thread.is_alive():  # join with a timeout so Ctrl-C is seen
        thread.join(0.2)
    if not box:
        raise BenchError("tight loop thread ended without a result")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _tight_loop(
    settings: Settings, jpegs: Sequence[bytes], n: int, threads: int, device: str = "cpu"
) -> Run:
    import torch

    from framepool.codec import decode

    model = _loop_model(settings, device)
    min_size = model.manifest.input_size
    k = len(jpegs)

    def one_batch(start: int, count: int) -> None:
        inputs, sizes = [], []
        for i in range(start, start + count):
            image = decode(
                jpegs[i % k],
                max_bytes=settings.max_frame_bytes,
                max_pixels=settings.max_frame_pixels,
                min_size=min_size,
            )
            inputs.append(model.preprocess(image))
            sizes.append((640, 480))
        x = model.to_device(model.collate(inputs))  # as the worker's runner does
        with torch.inference_mode():
            raw = model.infer(x)
            outputs = model.postprocess(raw, sizes)
        assert len(outputs) == count

    one_batch(0, BATCH)  # warm-up
    meter = CpuMeter({})
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        one_batch(start, min(BATCH, n - start))
    wall = time.perf_counter() - t0
    cpu = meter.per_frame_ms(n)
    cpu["loop"] = cpu.pop("producer")
    return Run(frames=n, steady_fps=n / wall, wall_fps=n / wall, cpu_ms_per_frame=cpu)


_MODEL_CACHE: dict[str, Any] = {}


def _loop_model(settings: Settings, device: str = "cpu") -> Any:
    from models.registry import load_model

    key = f"resnet18@{device}"
    if key not in _MODEL_CACHE:
        model = load_model(settings.models_root, "resnet18", device)
        model.warmup(batch_size=1)  # as the worker does, in the loading thread
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]
