"""The runtime on a real GPU: placement and measured memory, NVML readings, OOM
recovery with a genuine ``torch.cuda.OutOfMemoryError``, CUDA-event timings,
CUDA kernels in the profiler, fp16 against fp32, and a worker process on cuda:0.
"""

from __future__ import annotations

import gc
import io
import json
import os
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from benchmarks.models_runtime import MemoryHog
from framepool import codec, keys
from framepool.errors import BadFrame
from framepool.nvml import NvmlSampler
from framepool.settings import DEFAULT_MODELS_ROOT, Settings
from models.base import Model
from models.registry import available, load_model
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from workers.gpu_manager import GPUManager, TorchDeviceMemory
from workers.profiling import BatchProfiler
from workers.results import FrameRecord, Origin
from workers.runner import FrameJob, ModelRunner
from workers.snapshot import gpu_identity

DEVICE = "cuda:0"
MB = 1024 * 1024


def frame_job(i: int, x: np.ndarray, model_id: str = "m") -> FrameJob:
    now = time.time()
    meta: Any = {
        "model_id": model_id,
        "camera_id": "gpu",
        "seq": i,
        "captured_at": now,
        "enqueued_at": now,
        "deadline_at": None,
        "format": "png",
        "width": 640,
        "height": 480,
    }
    return FrameJob(FrameRecord(f"j{i}", f"c{i}", meta), x, (640, 480))


def run_jobs(model: Model, jobs: list[FrameJob], max_batch: int) -> tuple[list[dict], ModelRunner]:
    """All jobs queued before the runner starts (so its first batch is full), then run."""
    runner = ModelRunner(
        model,
        Origin("w-gpu", DEVICE, "1"),
        max_batch_size=max_batch,
        timeout_s=0.0,
        finish=lambda _: None,
    )
    for j in jobs:
        runner.submit(j)
    runner.start()
    done, _ = wait([j.future for j in jobs], timeout=120)
    runner.stop()
    assert len(done) == len(jobs), "the runner left frames unanswered"
    return [j.future.result() for j in jobs], runner


# ------------------------------------------------------------------ placement and memory
def test_gpu_manager_places_resnet18_on_cuda_measures_its_peak_and_release_frees_it() -> None:
    manifest = available(DEFAULT_MODELS_ROOT)["resnet18"]
    gpu = GPUManager(
        True, memory_reserve_mb=0.0, fallback_to_cpu=False, devices=TorchDeviceMemory()
    )
    device = gpu.allocate("resnet18", manifest.version, manifest.memory_mb)
    if torch.cuda.device_count() == 1:
        assert device == DEVICE
    assert device.startswith("cuda:")
    before = torch.cuda.memory_allocated(device)

    def build() -> Model:  # fp32: the manifest's fp16 would halve the figures below
        m = load_model(DEFAULT_MODELS_ROOT, "resnet18", device, precision="fp32")
        m.warmup(batch_size=8)
        return m

    model = gpu.measure("resnet18", manifest.version, device, build)
    (alloc,) = gpu.get_stats()["allocations"]
    assert alloc["device"] == device and alloc["measured_by"] == "cuda_peak"
    # 11.7 M fp32 parameters are 45 MB; warm-up activations at batch 8 come on top
    assert alloc["measured_mb"] > 40
    loaded = torch.cuda.memory_allocated(device)
    assert loaded - before > 40 * MB
    assert gpu.get_stats()["total_allocated_mb"] == pytest.approx(alloc["measured_mb"], abs=0.1)

    del model
    gc.collect()
    gpu.release("resnet18", manifest.version)
    assert gpu.get_stats()["allocations"] == []
    assert torch.cuda.memory_allocated(device) < loaded - 40 * MB
    assert torch.cuda.memory_reserved(device) < loaded  # release() emptied the cache


def _nvml_pids(index: int) -> list[int]:
    """The pids NVML lists on GPU ``index`` (a diagnostic for the skip below)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    finally:
        pynvml.nvmlShutdown()


def test_nvml_sampler_reads_the_gpu_and_this_process_memory() -> None:
    model = load_model(DEFAULT_MODELS_ROOT, "resnet18", DEVICE)
    model.warmup(batch_size=8)
    torch.cuda.synchronize()
    sampler = NvmlSampler(pids=[os.getpid()], min_interval_s=0.0)
    try:
        readings = sampler.read()
        assert sampler.available, sampler.reason
        assert readings and all((r.memory_total_mb or 0) > 0 for r in readings)
        ident = gpu_identity(DEVICE)
        assert ident is not None and ident["uuid"]
        mine = [r for r in readings if r.uuid == ident["uuid"]]
        assert len(mine) == 1, (
            f"torch's {ident['uuid']} not among NVML's {[r.uuid for r in readings]}"
        )
        reading = mine[0]
        assert (reading.memory_used_mb or 0) > 0
        if not reading.process_memory_mb and os.getpid() not in (pids := _nvml_pids(reading.index)):
            pytest.skip(f"NVML does not list this pid (PID namespace?): it lists {pids}")
        assert reading.process_memory_mb is not None and reading.process_memory_mb > 0
    finally:
        sampler.shutdown()
    del model


# ------------------------------------------------------------------ the runner on CUDA
def test_runner_answers_every_frame_when_the_model_really_runs_out_of_memory() -> None:
    fits, max_batch = 6, 16
    gc.collect()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(DEVICE)
    hog = MemoryHog(
        DEVICE, int(free / (fits + 0.5)), max_batch
    )  # batches above 6 exceed free memory
    jobs = [frame_job(i, np.full((1, 1, 1), i, np.float32), "hog") for i in range(4 * max_batch)]
    results, runner = run_jobs(hog, jobs, max_batch)

    assert [r["status"] for r in results] == ["ok"] * len(jobs)
    assert [r["outputs"]["value"] for r in results] == [i + 1.0 for i in range(len(jobs))]
    calls = [(n, fitted) for _, n, fitted in hog.calls]
    assert (max_batch, False) in calls  # the first, full batch genuinely ran out
    assert all(n <= fits for n, fitted in calls if fitted)
    assert max(r["batch_size"] for r in results) <= fits
    assert runner.cap.ooms >= 1 and runner.stats.oom_splits >= 1
    assert runner.cap.current < max_batch


def test_runner_times_host_to_device_and_inference_with_cuda_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = load_model(DEFAULT_MODELS_ROOT, "resnet18", DEVICE)
    model.warmup(batch_size=8)
    created: list[Any] = []
    real_event = torch.cuda.Event

    def counting_event(*args: Any, **kwargs: Any) -> Any:
        created.append(real_event(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(torch.cuda, "Event", counting_event)
    cam = SyntheticCamera("gpu", 640, 480, seed=1)
    jobs = [frame_job(i, model.preprocess(cam.frame(i).image), "resnet18") for i in range(8)]
    results, _ = run_jobs(model, jobs, max_batch=8)

    assert len(created) == 3  # three marks for the one batch: before/after the copy, after infer
    for r in results:
        assert r["status"] == "ok" and r["device"] == DEVICE and r["batch_size"] == 8
        assert r["timings_ms"]["host_to_device"] > 0
        assert r["timings_ms"]["inference"] > 0


def test_batch_profiler_records_cuda_kernels() -> None:
    model = load_model(DEFAULT_MODELS_ROOT, "resnet18", DEVICE)
    model.warmup(batch_size=4)
    x = model.to_device(torch.randn((4, 3, 224, 224), generator=torch.Generator().manual_seed(0)))
    prof = BatchProfiler(every_n=0)
    with prof.profile("cuda"):
        with torch.inference_mode():
            model.infer(x)
        torch.cuda.synchronize()
    rows = prof.table.snapshot()
    cuda_rows = [r for r in rows if r["device_type"] == "cuda"]
    assert prof.stats()["profiled_batches"] == 1 and prof.stats()["skipped_batches"] == 0
    assert cuda_rows, f"no CUDA kernels among {[r['name'] for r in rows[:15]]}"
    assert sum(r["total_time_ms"] for r in cuda_rows) > 0
    assert any(r["device_type"] == "cpu" for r in rows)


def test_fp16_resnet50_agrees_with_fp32() -> None:
    # the manifest asks for fp16 on CUDA: weights in half precision, channels-last
    model16 = load_model(DEFAULT_MODELS_ROOT, "resnet50", DEVICE)
    model32 = load_model(DEFAULT_MODELS_ROOT, "resnet50", DEVICE, precision="fp32")
    assert model16.precision == "fp16" and model32.precision == "fp32"
    assert next(model16.net.parameters()).dtype == torch.float16
    x = torch.randn((32, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    x16 = model16.to_device(x.pin_memory())
    assert x16.dtype == torch.float16 and x16.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y32 = model32.infer(model32.to_device(x)).float()
        y16 = model16.infer(x16).float()
    assert torch.isfinite(y16).all()
    top1 = (y32.argmax(dim=1) == y16.argmax(dim=1)).float().mean().item()
    assert top1 >= 0.75
    # The seeded random weights send most inputs to the same class, so top-1
    # alone proves little: the logits themselves must agree too.
    rel = ((y16 - y32).abs().max() / y32.abs().max()).item()
    assert rel < 0.02


def test_resnet_inputs_are_normalised_on_the_gpu_as_the_cpu_does() -> None:
    gpu = load_model(DEFAULT_MODELS_ROOT, "resnet18", DEVICE, precision="fp32")
    cpu = load_model(DEFAULT_MODELS_ROOT, "resnet18", "cpu")
    cam = SyntheticCamera("norm", width=640, height=480, fps=10.0, seed=3)
    images = [cam.frame(i).image for i in range(4)]
    host = np.stack([gpu.preprocess(im) for im in images])
    assert host.dtype == np.uint8 and host.shape == (4, 224, 224, 3)  # a quarter of fp32's bytes
    on_gpu = gpu.to_device(torch.from_numpy(host))
    assert on_gpu.is_contiguous(memory_format=torch.channels_last)
    on_cpu = cpu.to_device(torch.from_numpy(np.stack([cpu.preprocess(im) for im in images])))
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)
    half = load_model(DEFAULT_MODELS_ROOT, "resnet18", DEVICE)
    assert half.to_device(torch.from_numpy(host)).dtype == torch.float16


# ------------------------------------------------------------------ a worker on cuda:0
def test_worker_on_cuda_reports_gpu_nvml_and_measured_memory(
    start_gpu_worker, redis_url: str, settings: Settings
) -> None:
    name = f"gpu-test-{os.getpid()}@{os.uname().nodename}"
    worker = start_gpu_worker(["resnet18"], device=DEVICE, extra=["--name", name])
    client = redis.Redis.from_url(redis_url)
    snap: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        raw = client.get(keys.worker_heartbeat(name))
        snap = json.loads(raw) if raw else {}
        if snap.get("state") == "ready":
            break
        time.sleep(0.2)
    assert snap.get("state") == "ready", snap
    assert snap["device"] == DEVICE
    gpu = snap["gpu"]
    assert gpu is not None and str(gpu["uuid"]).startswith("GPU-")
    assert snap["nvml"]["available"] is True, snap["nvml"]["reason"]
    assert [g["uuid"] for g in snap["nvml"]["gpus"]] == [gpu["uuid"]]
    entry = snap["models"]["resnet18"]
    assert entry["device"] == DEVICE
    assert entry["measured_mb"] is not None and entry["measured_mb"] > 0

    cam = SyntheticCamera("gpu", 640, 480, seed=2)
    good = [codec.encode_jpeg(cam.frame(i).image) for i in range(3)]
    corrupt = good[0][:300] + b"\x00" * 64  # a valid header, then nothing to decode
    buf = io.BytesIO()
    Image.fromarray(cam.frame(3).image).save(buf, format="PNG")  # decoded on the CPU
    frames = [good[0], corrupt, good[1], buf.getvalue(), good[2]]
    with FrameProducer(settings) as producer:
        handles = producer.submit_many(
            [{"model_id": "resnet18", "frame": f, "camera_id": "gpu"} for f in frames]
        )
        results = [h.get(timeout=60) for h in handles]
    assert [r.status for r in results] == ["ok", "error", "ok", "ok", "ok"], results
    assert results[0].device == DEVICE and results[0].timings_ms.inference > 0
    assert results[1].error is not None and results[1].error.type == "BadFrame"
    # where torchvision's nvJPEG runs, the worker decodes JPEG frames on the GPU
    inputs = [json.loads(line) for line in worker.log_path.read_text().splitlines()
              if '"model_inputs"' in line]  # fmt: skip
    assert inputs and inputs[0]["precision"] == "fp16"
    assert inputs[0]["jpeg_on_device"] is _torchvision()


def _torchvision() -> bool:
    try:
        import torchvision.io  # noqa: F401
    except Exception:
        return False
    return True


def test_resnet_decodes_jpeg_on_the_gpu_as_the_cpu_does() -> None:
    if not _torchvision():
        pytest.skip("torchvision is not installed: JPEG frames are decoded on the CPU")
    gpu = load_model(DEFAULT_MODELS_ROOT, "resnet18", DEVICE, precision="fp32")
    cpu = load_model(DEFAULT_MODELS_ROOT, "resnet18", "cpu")
    assert gpu.accepts_jpeg and not cpu.accepts_jpeg
    cam = SyntheticCamera("nvjpeg", width=640, height=480, fps=10.0, seed=4)
    jpegs = [codec.encode_jpeg(cam.frame(i).image, quality=95) for i in range(6)]
    got = gpu.to_device(gpu.collate([np.frombuffer(bytearray(j), np.uint8) for j in jpegs]))
    assert got.shape == (6, 3, 224, 224) and got.is_contiguous(memory_format=torch.channels_last)
    decoded = [codec.decode(j, max_bytes=1 << 24, max_pixels=1 << 24) for j in jpegs]
    ref = cpu.to_device(cpu.collate([cpu.preprocess(im) for im in decoded]))
    diff = (got.cpu() - ref).abs()  # nvJPEG's IDCT and torch's resize against libjpeg + Pillow
    assert diff.mean().item() < 0.03 and diff.max().item() < 0.6
    with torch.inference_mode():
        top_gpu = gpu.infer(got).argmax(dim=1).cpu()
        top_cpu = cpu.infer(ref).argmax(dim=1)
    assert (top_gpu == top_cpu).float().mean().item() >= 5 / 6
    corrupt = jpegs[0][:300] + b"\x00" * 64
    with pytest.raises(BadFrame, match="cannot decode jpeg"):
        gpu.to_device(gpu.collate([np.frombuffer(bytearray(corrupt), np.uint8)]))


def test_this_directory_is_marked_gpu(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("gpu") is not None
    assert Path(request.node.path).parent.name == "gpu"
