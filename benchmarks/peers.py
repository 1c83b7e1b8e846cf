"""``framepool bench peers``: framepool against calling the model directly, Ray Serve
and Triton, measured in one run on one machine (issue #7).

Every system runs resnet18 on the same device with the same torch threads, the
same 640x480 JPEG q90 frames and the same batch cap (8), and does the same work
per frame (``framepool.codec.decode``, ``model.preprocess``, one batched forward
pass, ``model.postprocess``):

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

For each: closed-loop saturation throughput (32-64 frames outstanding, rate
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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import peers_ray, peers_report, peers_triton
from benchmarks.harness import machine_info, save_report, test_frames, utc_minute
from benchmarks.peers_clients import (
    DirectPeer,
    FramepoolPeer,
    PeerClient,
    run_closed,
    run_open,
    session_pids,
)
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
from benchmarks.pipeline import CpuMeter, start_framepool_workers, tight_loop
from benchmarks.sandbox import Sandbox, run_measure
from framepool.settings import Settings

CHUNK = 32  # closed loop: 32-64 frames outstanding
DISTINCT_FRAMES = 16
IDLE_WINDOW_S = 5.0
PEERS = ("ray", "triton")
SYSTEMS = ("direct", "framepool", "ray_handle", "ray_http", "triton_grpc", "triton_http")


# ------------------------------------------------------------------ the systems
@dataclass
class System:
    name: str
    client: PeerClient
    pids: Callable[[], list[int]] = field(default=lambda: [])

    def meter(self) -> CpuMeter:
        return CpuMeter({f"srv:{pid}": pid for pid in self.pids()})


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Plan:
    frames: int
    latency_frames: int
    repeats: int
    load: float
    cameras: int
    peers: tuple[str, ...]
    threads: int
    device: str
    replicas: int = 1  # framepool workers, Ray replicas, Triton instances

    @property
    def threads_each(self) -> int:
        """Torch threads per replica: the direct call's shared out, at least 1."""
        return max(1, self.threads // self.replicas)


def start_systems(
    sb: Sandbox, plan: Plan, jpegs: Sequence[bytes], status: dict[str, str | None],
    closers: list[Callable[[], None]],
) -> dict[str, System]:  # fmt: skip
    """Start framepool, the in-process model and every peer that can run; a peer that
    fails to start is recorded in ``status`` and left out."""
    from benchmarks.peers_model import Resnet18Service

    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    root = str(settings.models_root)
    systems: dict[str, System] = {}
    _log(f"direct: loading resnet18 on {plan.device}, {plan.replicas} model thread(s)")
    service = Resnet18Service(root, plan.device, plan.threads_each)
    direct = DirectPeer(service, jpegs, BATCH, plan.replicas)
    closers.append(direct.close)
    systems["direct"] = System("direct", direct)
    n = plan.replicas
    _log(f"framepool: starting {n} worker(s), {plan.threads_each} torch thread(s) each")
    names = ["fp-resnet18"] if n == 1 else [f"fp-resnet18-{i}" for i in range(n)]
    workers = start_framepool_workers(sb, "resnet18", plan.threads_each, plan.device, names)
    fp = FramepoolPeer(settings, "resnet18", jpegs)
    closers.append(fp.close)
    fp_pids = [w.pid for w in workers] + [sb.redis.proc.pid]
    systems["framepool"] = System("framepool", fp, lambda: fp_pids)
    if "ray" in plan.peers and status["ray"] is None:
        _log("ray: starting a private cluster and the @serve.batch deployment")
        try:
            ray = peers_ray.RayServe(sb, root, plan.device, plan.threads_each, BATCH, 2 * CHUNK,
                                     replicas=n)  # fmt: skip
        except Exception as exc:
            why = f"failed to start: {type(exc).__name__}: {exc}"[:2000]
            status["ray"] = why
            _log(f"ray: {why}")
        else:
            closers.append(ray.close)
            handle = peers_ray.RayHandleClient(ray, jpegs)
            http = peers_ray.RayHttpClient(ray, jpegs, 2 * CHUNK)
            closers.append(http.close)
            systems["ray_handle"] = System("ray_handle", handle, lambda: session_pids(ray.head.pid))
            systems["ray_http"] = System("ray_http", http, lambda: session_pids(ray.head.pid))
    if "triton" in plan.peers and status["triton"] is None:
        _log("triton: starting PyTriton")
        try:
            tri = peers_triton.TritonServer(sb, root, plan.device, plan.threads_each, BATCH,
                                            instances=n)  # fmt: skip
        except Exception as exc:
            why = f"failed to start: {type(exc).__name__}: {exc}"[:2000]
            status["triton"] = why
            _log(f"triton: {why}")
        else:
            closers.append(tri.close)
            for proto in ("grpc", "http"):
                c = peers_triton.TritonClient(tri, proto, jpegs)
                closers.append(c.close)
                systems[c.name] = System(c.name, c, lambda: session_pids(tri.child.pid))
    return systems


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
        settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
        calib = tight_loop(settings, jpegs, max(4 * BATCH, plan.frames // 4), plan.threads,
                           plan.device)  # fmt: skip
        fps = plan.load * calib.steady_fps
        sched = open_schedule(plan.latency_frames, fps, plan.cameras)
        times = [t for t, _, _ in sched]
        fp = systems["framepool"].client
        assert isinstance(fp, FramepoolPeer)
        fp.camera_of = [c for _, c, _ in sched]
        res["calibration_fps"] = round(calib.steady_fps, 2)
        res["open_fps"] = round(fps, 2)
        _log(f"tight loop {calib.steady_fps:.1f} frames/s: open loop at {fps:.1f} frames/s "
             f"from {plan.cameras} cameras")  # fmt: skip
        for s in list(systems.values()):
            _guard(
                res,
                systems,
                s.name,
                partial(run_closed, s.client, min(2 * CHUNK, plan.frames), CHUNK),
            )
        res["idle_cpus"] = idle_cpu(systems, IDLE_WINDOW_S)
        names = [n for n in SYSTEMS if n in systems]
        for r in range(plan.repeats):
            for name in rotate(names, r):
                if name in systems:
                    _guard(res, systems, name, partial(_closed, res, systems[name], plan, r, jpegs))
            for name in rotate(names, r):
                if name in systems:
                    _guard(res, systems, name, partial(_open, res, systems[name], times, r))
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
    return res


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
        _log(f"{name} dropped: {res['failed'][name][:300]}")
        systems.pop(name, None)


def _closed(res: dict[str, Any], s: System, plan: Plan, r: int, jpegs: Sequence[bytes]) -> None:
    if s.name == "direct":
        settings = Settings(max_batch_size=BATCH)
        run = tight_loop(settings, jpegs, loop_frames(plan.frames), plan.threads, plan.device,
                         plan.replicas)  # fmt: skip
        stats = {
            "frames": run.frames,
            "steady_fps": round(run.steady_fps, 2),
            "wall_fps": round(run.wall_fps, 2),
            "mean_batch_size": float(BATCH),
            "cpu_ms_per_frame": {
                "server": 0.0,
                "client": run.cpu_ms_per_frame.get("loop", 0.0),
                "others_cpus": run.cpu_ms_per_frame.get("others_cpus", 0.0),
            },
        }
    else:
        meter = s.meter()
        replies, wall = run_closed(s.client, plan.frames, CHUNK)
        stats = closed_stats(replies, wall)
        stats["cpu_ms_per_frame"] = cpu_split(meter.per_frame_ms(plan.frames))
    res["closed"].setdefault(s.name, []).append(stats)
    _log(f"repeat {r + 1}: {s.name} closed loop {stats['steady_fps']:.1f} frames/s "
         f"(mean batch {stats['mean_batch_size']})")  # fmt: skip


def _open(res: dict[str, Any], s: System, times: Sequence[float], r: int) -> None:
    meter = s.meter()
    done, late = run_open(s.client, times)
    stats = open_stats(done, late)
    stats["cpu_ms_per_frame"] = cpu_split(meter.per_frame_ms(len(times)))
    res["open"].setdefault(s.name, []).append(stats)
    _log(f"repeat {r + 1}: {s.name} open loop p50 {stats['e2e_p50_ms']:.1f} ms "
         f"p99 {stats['e2e_p99_ms']:.1f} ms (mean batch {stats['mean_batch_size']})")  # fmt: skip


# ------------------------------------------------------------------ entry point
def command_line(frames: int, latency_frames: int | None, repeats: int, load: float,
                 cameras: int, peers: Sequence[str], replicas: int = 1) -> str:  # fmt: skip
    parts = [f"framepool bench peers --frames {frames} --repeats {repeats}"]
    if latency_frames is not None:
        parts.append(f"--latency-frames {latency_frames}")
    parts.append(f"--load {load:g} --cameras {cameras}")
    if tuple(peers) != PEERS:
        parts.append(f"--peers {','.join(peers) or 'none'}")
    if replicas != 1:
        parts.append(f"--replicas {replicas}")
    return " ".join(parts)


def main(frames: int, repeats: int, out: Path, started: float, *, latency_frames: int | None = None,
         load: float = 0.5, cameras: int = 4, peers: Sequence[str] = PEERS,
         docs: bool = True, replicas: int = 1) -> int:  # fmt: skip
    import torch

    command = command_line(frames, latency_frames, repeats, load, cameras, peers, replicas)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    plan = Plan(frames, latency_frames or max(16, frames // 2), repeats, load, cameras,
                tuple(peers), torch.get_num_threads(), device, replicas)  # fmt: skip
    status: dict[str, str | None] = {
        "ray": peers_ray.missing() if "ray" in peers else "not selected (--peers)",
        "triton": peers_triton.missing() if "triton" in peers else "not selected (--peers)",
    }
    for name, why in status.items():
        if why is not None:
            _log(f"{name}: {why}")
    jpegs = test_frames(DISTINCT_FRAMES, quality=Settings().jpeg_quality)
    info = machine_info()
    info["device"] = device
    info["versions"].update(_peer_versions())
    _log(f"{command}: {info['nproc']} CPUs, {info['cpu']}; {device}, torch threads {plan.threads}")
    res = run_measure(lambda sb: measure(sb, plan, jpegs, status))
    if isinstance(res, int):
        return res
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "frames": frames,
            "loop_frames": loop_frames(frames),
            "latency_frames": plan.latency_frames,
            "repeats": repeats,
            "load": load,
            "cameras": cameras,
            "max_batch_size": BATCH,
            "batch_wait_ms": 5.0,
            "torch_threads": plan.threads,
            "replicas": replicas,
            "direct_replicas": replicas,  # loop / model threads of the direct call (limit)
            "device": device,
            "closed_loop_outstanding": [CHUNK, 2 * CHUNK],
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
