"""``framepool bench peers``: framepool against calling the model directly, Ray Serve
and Triton, measured in one run on one machine (issue #7).

Every system runs the same model (``--model``, resnet18) on the same device
(``--device``) with the same torch threads, the same 640x480 JPEG q90 frames and
the same batch cap (``--batch``, 8), and does the same work per frame
(:mod:`benchmarks.peers_model`: the worker's decode or, where the model decodes
JPEG on its GPU, header check; ``model.preprocess``, one batched forward pass,
``model.postprocess``). On a GPU the direct call's closed loop is ``bench gpu``'s
limit loop (:class:`benchmarks.peers_systems.Limit`), and ``--clients N`` drives
every system from N client processes (:mod:`benchmarks.producer_procs`). The
systems are started by :mod:`benchmarks.peers_systems`; this module measures them:

- *direct*: the limit. Closed loop: ``benchmarks.pipeline_tight_loop.tight_loop`` (batches
  of 8 in one process). Open loop: the camera app calling the model itself
  (:class:`~benchmarks.peers_clients.DirectPeer`: one model thread running
  whatever frames are waiting, up to 8, without waiting for more). With
  ``--replicas N`` it has N loop threads (closed) or N model threads (open) sharing
  one loaded model, each with threads / N torch threads, as the servers' replicas;
  the open loop's rate stays a fraction of the one-thread loop's (the calibration).
- *framepool*: a real worker process, frames through ``FrameProducer``.
- *Ray Serve* (``ray[serve]``): ``@serve.batch`` deployment, through a
  ``DeploymentHandle`` and over HTTP (:mod:`benchmarks.peers_ray`).
- *Triton* (``nvidia-pytriton``): a Python model with dynamic batching, through
  PyTriton's client over gRPC and over HTTP (:mod:`benchmarks.peers_triton`).

For each: closed-loop saturation throughput (4-8 batches outstanding, rate
from the servers' completion stamps after the first 10%) and open-loop latency
at ``--load`` (50%) of the tight loop's rate, frames from ``--cameras`` cameras
on a fixed seeded schedule, p50/p99 from send to reply on the client. Every
figure is also given as a ratio against *direct* from the same run; repeats are
interleaved (the order rotates) and medians reported. Peers that are not
installed, or cannot run here, are reported as such; the others still run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import peers_ray, peers_report, peers_triton
from benchmarks.harness import machine_info, save_report, test_frames, utc_minute
from benchmarks.peers_clients import (
    FramepoolPeer,
    Reply,
    run_closed,
    run_open,
)
from benchmarks.peers_model import MODEL_ID
from benchmarks.peers_stats import (
    BATCH,
    WARMUP_FRAC,
    closed_stats,
    cpu_split,
    loop_frames,
    open_schedule,
    open_stats,
    rotate,
)
from benchmarks.peers_systems import Limit, Plan, System, log, start_systems
from benchmarks.pipeline import CpuMeter
from benchmarks.sandbox import Sandbox, run_measure
from framepool.settings import Settings

DISTINCT_FRAMES = 16
IDLE_WINDOW_S = 5.0
PEERS = ("ray", "triton")
SYSTEMS = ("direct", "framepool", "ray_handle", "ray_http", "triton_grpc", "triton_http")


def idle_cpu(systems: dict[str, System], window: float) -> dict[str, float]:
    """CPUs' worth each system's server processes burn while nothing is sent."""
    groups: dict[str, tuple[int, ...]] = {}
    for s in systems.values():
        pids = tuple(s.pids())
        if pids and pids not in groups.values():
            groups[s.name.split("_")[0]] = pids
    meters = {name: CpuMeter({f"srv:{p}": p for p in pids}) for name, pids in groups.items()}
    time.sleep(window)
    out = {}
    for name, m in meters.items():
        per = m.per_frame_ms(1)  # ms over the window
        out[name] = round(cpu_split(per)["server"] / 1000.0 / window, 3)
    return out


def measure(sb: Sandbox, plan: Plan, jpegs: Sequence[bytes],
            status: dict[str, str | None]) -> dict[str, Any]:  # fmt: skip
    closers: list[Callable[[], None]] = []
    res: dict[str, Any] = {"closed": {}, "open": {}, "failed": {}}
    try:
        systems = start_systems(sb, plan, jpegs, status, closers)
        limit = Limit(plan, jpegs)
        closers.append(limit.close)
        calib = limit.run(max(4 * plan.batch, plan.frames // 4))
        fps = plan.load * calib["steady_fps"]
        sched = open_schedule(plan.latency_frames, fps, plan.cameras)
        fp = systems["framepool"].client
        assert isinstance(fp, FramepoolPeer)
        fp.camera_of = [c for _, c, _ in sched]
        res["calibration_fps"] = round(calib["steady_fps"], 2)
        res["open_fps"] = round(fps, 2)
        log(f"limit {calib['steady_fps']:.1f} frames/s: open loop at {fps:.1f} frames/s "
             f"from {plan.cameras} cameras")  # fmt: skip
        for s in list(systems.values()):  # warm-up
            _guard(
                res,
                systems,
                s.name,
                partial(_drive_closed, s, plan, min(2 * plan.chunk * plan.clients, plan.frames)),
            )
        res["idle_cpus"] = idle_cpu(systems, IDLE_WINDOW_S)
        names = [n for n in SYSTEMS if n in systems]
        for r in range(plan.repeats):
            for name in rotate(names, r):
                if name in systems:
                    _guard(res, systems, name, partial(_closed, res, systems[name], plan, r, limit))
            for name in rotate(names, r):
                if name in systems:
                    _guard(res, systems, name, partial(_open, res, systems[name], sched, r))
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
    return res


def _drive_closed(s: System, plan: Plan, n: int) -> tuple[list[Reply], float]:
    """``n`` frames through ``s`` in a closed loop, from its client processes if any."""
    if s.procs is not None:
        return s.procs.run(n, plan.chunk)
    return run_closed(s.client, n, plan.chunk)


def _guard(
    res: dict[str, Any], systems: dict[str, System], name: str, fn: Callable[[], Any]
) -> None:
    """Run one measurement; a failing peer is dropped (and reported), not the bench."""
    try:
        fn()
    except Exception as exc:
        if name in ("direct", "framepool"):
            raise
        res["failed"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        log(f"{name} dropped: {res['failed'][name][:300]}")
        systems.pop(name, None)


def _closed(res: dict[str, Any], s: System, plan: Plan, r: int, limit: Limit) -> None:
    if s.name == "direct":
        stats = limit.run(loop_frames(plan.frames, plan.batch))
    else:
        meter = s.meter()
        replies, wall = _drive_closed(s, plan, plan.frames)
        stats = closed_stats(replies, wall)
        stats["cpu_ms_per_frame"] = cpu_split(meter.per_frame_ms(plan.frames))
    res["closed"].setdefault(s.name, []).append(stats)
    log(f"repeat {r + 1}: {s.name} closed loop {stats['steady_fps']:.1f} frames/s "
         f"(mean batch {stats['mean_batch_size']})")  # fmt: skip


def _open(res: dict[str, Any], s: System, sched: Sequence[tuple[float, int, int]], r: int) -> None:
    meter = s.meter()
    if s.procs is not None:
        done, late = s.procs.run_open(sched)
    else:
        done, late = run_open(s.client, [t for t, _, _ in sched])
    stats = open_stats(done, late)
    stats["cpu_ms_per_frame"] = cpu_split(meter.per_frame_ms(len(sched)))
    res["open"].setdefault(s.name, []).append(stats)
    log(f"repeat {r + 1}: {s.name} open loop p50 {stats['e2e_p50_ms']:.1f} ms "
         f"p99 {stats['e2e_p99_ms']:.1f} ms (mean batch {stats['mean_batch_size']})")  # fmt: skip


# ------------------------------------------------------------------ entry point
def command_line(frames: int, latency_frames: int | None, repeats: int, load: float,
                 cameras: int, peers: Sequence[str], replicas: int = 1, *,
                 model: str = MODEL_ID, batch: int = BATCH, device: str | None = None,
                 clients: int = 1) -> str:  # fmt: skip
    parts = ["framepool bench peers"]
    if model != MODEL_ID or batch != BATCH:
        parts.append(f"--model {model} --batch {batch}")
    if device is not None:
        parts.append(f"--device {device}")
    parts.append(f"--frames {frames} --repeats {repeats}")
    if latency_frames is not None:
        parts.append(f"--latency-frames {latency_frames}")
    parts.append(f"--load {load:g} --cameras {cameras}")
    if tuple(peers) != PEERS:
        parts.append(f"--peers {','.join(peers) or 'none'}")
    if replicas != 1:
        parts.append(f"--replicas {replicas}")
    if clients != 1:
        parts.append(f"--clients {clients}")
    return " ".join(parts)


def main(frames: int, repeats: int, out: Path, started: float, *, latency_frames: int | None = None,
         load: float = 0.5, cameras: int = 4, peers: Sequence[str] = PEERS,
         docs: bool = True, replicas: int = 1, model: str = MODEL_ID, batch: int = BATCH,
         device: str | None = None, clients: int = 1) -> int:  # fmt: skip
    import torch

    command = command_line(frames, latency_frames, repeats, load, cameras, peers, replicas,
                           model=model, batch=batch, device=device, clients=clients)  # fmt: skip
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        print(f"framepool bench peers: --device {device}, but there is no CUDA device "
              "(torch.cuda.is_available() is False)")  # fmt: skip
        return 2
    plan = Plan(frames, latency_frames or max(16, frames // 2), repeats, load, cameras,
                tuple(peers), torch.get_num_threads(), device, replicas, model, batch,
                clients)  # fmt: skip
    status: dict[str, str | None] = {
        "ray": peers_ray.missing() if "ray" in peers else "not selected (--peers)",
        "triton": peers_triton.missing() if "triton" in peers else "not selected (--peers)",
    }
    for name, why in status.items():
        if why is not None:
            log(f"{name}: {why}")
    jpegs = test_frames(DISTINCT_FRAMES, quality=Settings().jpeg_quality)
    info = machine_info()
    info["device"] = device
    info["versions"].update(_peer_versions())
    if plan.cuda:
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["versions"]["cuda"] = torch.version.cuda
    log(f"{command}: {info['nproc']} CPUs, {info['cpu']}; {device}, torch threads {plan.threads}")
    res = run_measure(lambda sb: measure(sb, plan, jpegs, status))
    if isinstance(res, int):
        return res
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "model": model,
            "frames": frames,
            "loop_frames": loop_frames(frames, batch),
            "latency_frames": plan.latency_frames,
            "repeats": repeats,
            "load": load,
            "cameras": cameras,
            "max_batch_size": batch,
            "batch_wait_ms": 5.0,
            "torch_threads": plan.threads,
            "replicas": replicas,
            "direct_replicas": replicas,  # loop / model threads of the direct call (limit)
            "device": device,
            "clients": clients,
            "closed_loop_outstanding": [plan.chunk * clients, 2 * plan.chunk * clients],
            "limit": "gpu.LimitLoop" if plan.cuda else "tight_loop",
            "warmup_frac": WARMUP_FRAC,
            "jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024),
            "calibration_fps": res["calibration_fps"],
            "open_fps": res["open_fps"],
        },
        "peers": {k: v for k, v in status.items()},
        "failed": res["failed"],
        "idle_cpus": res["idle_cpus"],
        "details": {"closed": res["closed"], "open": res["open"]},
        "runtime_s": round(time.time() - started, 1),
    }
    report["figures"] = peers_report.build_figures(report)
    return save_report(report, out, peers_report.DOCS, peers_report.update_docs, peers_report.print_summary,
                       write_docs=docs)  # fmt: skip


def _peer_versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for dist in ("ray", "nvidia-pytriton", "tritonclient", "httpx"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "-"
    return out
