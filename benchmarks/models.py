"""``framepool bench models``: the models' own limits and the runtime's GPU costs.

On ``cuda:0`` when CUDA is available, else on the CPU: (1) frames/s of
``model.infer`` alone per batch size, fp32 and (CUDA only) fp16 as
``copy.deepcopy(net).half()`` (not autocast), channels_last on CUDA; (2) the
CUDA peak ``GPUManager.measure`` records for load + warm-up at the largest
batch; (3) one batch plain vs. under ``BatchProfiler.profile``; (4) OOM
recovery of a ``ModelRunner`` (CUDA only). (3) and (4) live in
``benchmarks.models_runtime``, the report in ``benchmarks.models_report``; the
method is spelled out in docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import gc
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import machine_info, median, save_report, utc_minute
from benchmarks.models_report import DOCS, command_line, print_summary, update_docs
from benchmarks.models_runtime import (
    PROFILE_BATCH,
    oom_recovery,
    profiler_cost,
    round_or_none,
    sync,
)
from benchmarks.pipeline import CpuMeter
from framepool.log import configure_logging
from framepool.settings import Settings
from models.base import Model
from models.registry import available, load_model
from workers.gpu_manager import GPUManager, TorchDeviceMemory
from workers.oom import is_oom

DEFAULT_MODELS = ("resnet50", "resnet18")
BATCHES = {"cpu": (1, 8, 32), "cuda": (1, 8, 32, 64)}
WARMUP_CALLS = {"cpu": 1, "cuda": 5}
DEFAULT_REPEATS = 5
MIN_REPEAT_S = 0.2  # each timed repeat runs at least this long
MAX_CALLS = 1000
PROFILE_MODELS = ("shape_detector", "resnet18")
MB = 1024.0 * 1024.0


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed_s(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Seconds that ``calls`` calls of ``fn`` take, the device synchronised around them."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return time.perf_counter() - t0


def _rate(fn: Callable[[], object], device: torch.device, batch: int, repeats: int) -> dict:
    """Median frames/s of ``fn`` (one batch per call) over ``repeats`` timed repeats."""
    one = min(_timed_s(fn, device) for _ in range(WARMUP_CALLS[device.type]))
    calls = max(1, min(MAX_CALLS, math.ceil(MIN_REPEAT_S / max(one, 1e-6))))
    fps = [batch * calls / _timed_s(fn, device, calls) for _ in range(repeats)]
    mid = median(fps)
    return {
        "fps": round(mid, 2),
        "ms_per_batch": round(1000.0 * batch / mid, 3),
        "calls_per_repeat": calls,
        "fps_repeats": [round(f, 2) for f in fps],
    }


# ------------------------------------------------------------------ (1) throughput
def throughput(model: Model, batches: Sequence[int], repeats: int) -> dict[str, Any]:
    """frames/s per dtype and batch size; an out-of-memory batch is reported, not fatal."""
    dev, net = model.device, getattr(model, "net", None)
    variants: dict[str, tuple[Callable[[torch.Tensor], object], torch.dtype]] = {
        "fp32": (model.infer, torch.float32)
    }
    out: dict[str, Any] = {"memory_format": "contiguous (NCHW)"}
    fmt = torch.contiguous_format
    if dev.type == "cuda" and isinstance(net, torch.nn.Module):
        fmt, out["memory_format"] = torch.channels_last, "channels_last"
        net.to(memory_format=fmt)  # type: ignore[call-overload]  # in place: infer runs it
        variants["fp16"] = (copy.deepcopy(net).half(), torch.float16)
    elif dev.type == "cuda":
        out["fp16"] = {"skipped": "the model has no .net module to convert to half"}
    w, h = model.manifest.input_size
    gen = torch.Generator().manual_seed(0)
    for name, (fn, dtype) in variants.items():
        rows: dict[str, Any] = {}
        for b in batches:
            x = (
                torch.randn((b, 3, h, w), generator=gen)
                .to(dev, dtype)
                .contiguous(memory_format=fmt)
            )
            meter = CpuMeter({})
            try:
                with torch.inference_mode():
                    rows[str(b)] = _rate(partial(fn, x), dev, b, repeats)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                rows[str(b)] = {"error": f"out of memory: {str(exc).splitlines()[0][:160]}"}
            rows[str(b)]["others_cpus"] = meter.per_frame_ms(1)["others_cpus"]
            del x
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            _log(f"  {model.id} {name} batch {b}: {rows[str(b)].get('fps', 'OOM')} frames/s")
        out[name] = rows
    variants.clear()
    return out


# ------------------------------------------------------------------ (2) memory
class _FirstGpuOnly(TorchDeviceMemory):
    """torch's devices, limited to cuda:0 (the device this benchmark runs on)."""

    def count(self) -> int:
        return min(1, super().count())


def load_measured(
    gpu: GPUManager, root: Path, model_id: str, device: str, warm_batch: int
) -> tuple[Model, dict[str, Any]]:
    """Place, load and warm up ``model_id`` under ``GPUManager.measure``."""
    manifest = available(root)[model_id]
    placed = gpu.allocate(model_id, manifest.version, manifest.memory_mb)
    cuda = placed.startswith("cuda")
    before = torch.cuda.memory_allocated(placed) if cuda else 0

    def build() -> Model:
        model = load_model(root, model_id, placed)
        model.warmup(batch_size=warm_batch)
        return model

    t0 = time.perf_counter()
    model = gpu.measure(model_id, manifest.version, placed, build)
    load_s = time.perf_counter() - t0
    alloc = next(a for a in gpu.get_stats()["allocations"] if a["model_id"] == model_id)
    resident = (torch.cuda.memory_allocated(placed) - before) / MB if cuda else None
    return model, {
        "device": placed,
        "estimated_mb": manifest.memory_mb,
        "measured_mb": round_or_none(alloc["measured_mb"], 1),
        "measured_by": alloc["measured_by"],
        "resident_mb": round_or_none(resident, 1),
        "warmup_batch": warm_batch,
        "load_warmup_s": round(load_s, 2),
        "reason": None
        if cuda
        else "GPUManager.measure records CUDA peaks only; on the CPU it measures nothing",
    }


# ------------------------------------------------------------------ entry point
def _gpu_info(device: str) -> dict[str, Any] | None:
    if not device.startswith("cuda"):
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "total_mb": round(props.total_memory / MB, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def main(
    settings: Settings,
    models: Sequence[str] | None,
    batches: Sequence[int] | None,
    repeats: int | None,
    out: Path,
    started: float,
) -> int:
    """Run (1)-(4), write ``out`` (JSON) and the docs section; returns the exit code."""
    command = command_line(models, batches, repeats)
    configure_logging(settings.model_copy(update={"log_level": "WARNING", "log_format": "console"}))
    root = settings.models_root
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if device != "cpu" else "cpu"
    model_ids = list(models or DEFAULT_MODELS)
    sizes = sorted(set(batches or BATCHES[kind]))
    n = repeats or DEFAULT_REPEATS
    missing = [m for m in {*model_ids, *PROFILE_MODELS} if m not in available(root)]
    if missing:
        print(f"models not found under {root}: {', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    info = machine_info()
    _log(f"{command}: {device}, {info['nproc']} CPUs, torch threads {torch.get_num_threads()}")
    gpu = GPUManager(kind == "cuda", 0.0, False, _FirstGpuOnly() if kind == "cuda" else None)
    report: dict[str, Any] = {"throughput": {}, "memory": {}, "profiler": {}}
    # As in the worker: load and warm up in this thread, run batches in another.
    # On a busy CPU this matters with torch's OpenMP (docs/benchmarks.md, OpenMP note).
    runner = ThreadPoolExecutor(1, thread_name_prefix="bench-runner")
    meter = CpuMeter({})
    try:
        for model_id in model_ids:
            _log(f"{model_id}: load + warm-up at batch {max(sizes)}, then throughput")
            model, report["memory"][model_id] = load_measured(
                gpu, root, model_id, device, max(sizes)
            )
            report["throughput"][model_id] = runner.submit(throughput, model, sizes, n).result()
            gpu.release(model_id, model.version)
            del model
            gc.collect()
        for model_id in PROFILE_MODELS:
            _log(f"{model_id}: profiler cost at batch {PROFILE_BATCH}")
            model = load_model(root, model_id, device)
            model.warmup(batch_size=PROFILE_BATCH)
            report["profiler"][model_id] = runner.submit(profiler_cost, model, n).result()
            del model
            gc.collect()
        _log("OOM recovery" if kind == "cuda" else "OOM recovery: skipped (no CUDA)")
        report["oom"] = oom_recovery(device)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("benchmark failed: nothing written", file=sys.stderr)
        return 1
    finally:
        runner.shutdown()
    runtime = time.time() - started
    report = {
        "command": command,
        "date": utc_minute(),
        "machine": {**info, "device": device, "gpu": _gpu_info(device)},
        "config": {
            "models": model_ids,
            "batches": sizes,
            "repeats": n,
            "warmup_calls": WARMUP_CALLS[kind],
            "min_repeat_s": MIN_REPEAT_S,
            "torch_threads": torch.get_num_threads(),
            "dtypes": ["fp32", "fp16"] if kind == "cuda" else ["fp32"],
            "fp16": "pure half: copy.deepcopy(net).half() on half inputs (no autocast)",
            "input": "seeded torch.randn batch already on the device (forward pass only)",
            "profile_models": list(PROFILE_MODELS),
            "profile_batch": PROFILE_BATCH,
            "timed_in": "a second thread (load and warm-up in the main thread), as the worker",
        },
        "others_cpus": meter.per_frame_ms(1)["others_cpus"],
        **report,
        "runtime_s": round(runtime, 1),
    }
    return save_report(report, out, DOCS, update_docs, print_summary)
