"""The systems ``framepool bench peers`` compares, started and ready to be driven
(:mod:`benchmarks.peers` measures them): the plan of a run, the direct call's
closed loop (:class:`Limit`, the limit), and each system with its client, its
server processes and, with ``--clients``, its client processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from benchmarks import peers_ray, peers_triton
from benchmarks.peers_clients import DirectPeer, FramepoolPeer, PeerClient, session_pids
from benchmarks.peers_model import MODEL_ID
from benchmarks.peers_stats import BATCH, batch_rate
from benchmarks.pipeline import CpuMeter, start_framepool_workers, tight_loop
from benchmarks.producer_procs import ClientProcesses, Factory, framepool_client
from benchmarks.sandbox import Sandbox
from framepool.settings import Settings


# ------------------------------------------------------------------ the systems
@dataclass
class System:
    name: str
    client: PeerClient
    pids: Callable[[], list[int]] = field(default=lambda: [])
    procs: ClientProcesses | None = None  # with --clients N > 1: the client processes

    def meter(self) -> CpuMeter:
        pids = {f"srv:{pid}": pid for pid in self.pids()}
        if self.procs is not None:
            pids.update({f"cli:{pid}": pid for pid in self.procs.pids()})
        return CpuMeter(pids)


def log(msg: str) -> None:
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
    model: str = MODEL_ID
    batch: int = BATCH  # the batch cap of every system
    clients: int = 1  # client processes per system; 1: this process drives them all

    @property
    def threads_each(self) -> int:
        """Torch threads per replica: the direct call's shared out, at least 1."""
        return max(1, self.threads // self.replicas)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def chunk(self) -> int:
        """Closed loop: ``chunk``..``2*chunk`` frames outstanding per client: 4-8
        batches from this process, 2-4 batches from each of several processes."""
        return 4 * self.batch if self.clients == 1 else 2 * self.batch


class Limit:
    """The direct call's closed loop, the limit: on the CPU ``tight_loop`` (batches in
    one process; ``--replicas`` loop threads); on a GPU ``bench gpu``'s limit loop
    (decode threads, one per CPU, preparing the next batches while the GPU runs
    this one: :class:`benchmarks.gpu.LimitLoop`)."""

    def __init__(self, plan: Plan, jpegs: Sequence[bytes], threaded: bool | None = None) -> None:
        """``threaded``: the GPU's loop (default: on a GPU), which runs on the CPU too."""
        self.plan, self.jpegs = plan, jpegs
        self.settings = Settings(max_batch_size=plan.batch)
        self.loop: Any = None
        if plan.cuda if threaded is None else threaded:
            from benchmarks import gpu

            gplan = gpu.Plan(plan.model, plan.batch, plan.frames, plan.repeats, (), plan.clients,
                             plan.device, os.cpu_count() or 1)  # fmt: skip
            self.loop = gpu.LimitLoop(self.settings, gplan, jpegs)
            self.loop.run(2 * plan.batch)  # warm-up

    def run(self, n: int) -> dict[str, Any]:
        plan = self.plan
        if self.loop is None:
            run = tight_loop(self.settings, self.jpegs, n, plan.threads, plan.device,
                             plan.replicas, model_id=plan.model, batch=plan.batch)  # fmt: skip
            steady, wall_fps, loop_cpu = run.steady_fps, run.wall_fps, run.cpu_ms_per_frame
        else:
            meter = CpuMeter({})
            t0 = time.perf_counter()
            stamps = self.loop.run(n)
            wall = time.perf_counter() - t0
            loop_cpu = meter.per_frame_ms(n)
            loop_cpu["loop"] = loop_cpu.pop("producer")
            steady, wall_fps = batch_rate(stamps), n / wall
        return {
            "frames": n,
            "steady_fps": round(steady, 2),
            "wall_fps": round(wall_fps, 2),
            "mean_batch_size": float(plan.batch),
            "cpu_ms_per_frame": {
                "server": 0.0,
                "client": loop_cpu.get("loop", 0.0),
                "others_cpus": loop_cpu.get("others_cpus", 0.0),
            },
        }

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


def _with_procs(system: System, plan: Plan, factory: Factory, jpegs: Sequence[bytes],
                closers: list[Callable[[], None]]) -> System:  # fmt: skip
    """``system`` driven from ``plan.clients`` processes, each with ``factory(jpegs)``
    (with one client, this process drives it itself)."""
    if plan.clients > 1:
        procs = ClientProcesses(factory, jpegs, plan.clients)
        closers.append(procs.close)
        procs.warm()
        system.procs = procs
    return system


def start_systems(
    sb: Sandbox, plan: Plan, jpegs: Sequence[bytes], status: dict[str, str | None],
    closers: list[Callable[[], None]],
) -> dict[str, System]:  # fmt: skip
    """Start framepool, the in-process model and every peer that can run; a peer that
    fails to start is recorded in ``status`` and left out."""
    from benchmarks.peers_model import ModelService

    settings = Settings(redis_url=sb.redis_url, max_batch_size=plan.batch)
    root = str(settings.models_root)
    model, n, batch = plan.model, plan.replicas, plan.batch
    outstanding = 2 * plan.chunk * plan.clients  # the most a closed loop keeps in flight
    systems: dict[str, System] = {}
    log(f"direct: loading {model} on {plan.device}, {n} model thread(s)")
    service = ModelService(root, plan.device, plan.threads_each, model)
    direct = DirectPeer(service, jpegs, batch, n)
    closers.append(direct.close)
    systems["direct"] = System("direct", direct)
    threads = 1 if plan.cuda else plan.threads_each
    log(f"framepool: starting {n} worker(s), {threads} torch thread(s) each")
    names = [f"fp-{model}"] if n == 1 else [f"fp-{model}-{i}" for i in range(n)]
    workers = start_framepool_workers(sb, model, threads, plan.device, names, batch)
    fp = FramepoolPeer(settings, model, jpegs)
    closers.append(fp.close)
    fp_pids = [w.pid for w in workers] + [sb.redis.proc.pid]
    systems["framepool"] = _with_procs(
        System("framepool", fp, lambda: fp_pids), plan,
        partial(framepool_client, sb.redis_url, batch, model), jpegs, closers,
    )  # fmt: skip
    ray = _start_peer("ray", "starting a private cluster and the @serve.batch deployment",
                      plan, status, partial(peers_ray.RayServe, sb, root, plan.device,
                                            plan.threads_each, batch, outstanding,
                                            replicas=n, model_id=model))  # fmt: skip
    if ray is not None:
        closers.append(ray.close)
        handle = peers_ray.RayHandleClient(ray.handle, jpegs)
        # per client: as many connections as it keeps frames in flight, but at most 64
        # a process with --clients (8 x 64 = 8 batches of 64 in flight, and the
        # proxy's open files stay well under a 1024 limit)
        concurrency = 2 * plan.chunk if plan.clients == 1 else min(2 * plan.chunk, 64)
        http = peers_ray.RayHttpClient(ray.url, jpegs, concurrency)
        closers.append(http.close)
        ray_pids = partial(session_pids, ray.head.pid)
        systems["ray_handle"] = _with_procs(
            System("ray_handle", handle, ray_pids), plan,
            partial(peers_ray.handle_client, ray.gcs_port), jpegs, closers,
        )  # fmt: skip
        systems["ray_http"] = _with_procs(
            System("ray_http", http, ray_pids), plan,
            partial(peers_ray.http_client, ray.url, concurrency), jpegs, closers,
        )  # fmt: skip
    tri = _start_peer("triton", "starting PyTriton", plan, status,
                      partial(peers_triton.TritonServer, sb, root, plan.device, plan.threads_each,
                              batch, instances=n, model_id=model))  # fmt: skip
    if tri is not None:
        closers.append(tri.close)
        tri_pids = partial(session_pids, tri.child.pid)
        for proto in ("grpc", "http"):
            c = peers_triton.TritonClient.of(tri, proto, jpegs)
            closers.append(c.close)
            factory = partial(peers_triton.TritonClient, proto, tri.port(proto), model)
            systems[c.name] = _with_procs(System(c.name, c, tri_pids), plan, factory, jpegs,
                                          closers)  # fmt: skip
    return systems


def _start_peer(name: str, what: str, plan: Plan, status: dict[str, str | None],
                start: Callable[[], Any]) -> Any:  # fmt: skip
    """``start()`` for a peer that was chosen and can run; None, with the reason in
    ``status``, where it was not chosen, cannot run here or failed to start."""
    if name not in plan.peers or status[name] is not None:
        return None
    log(f"{name}: {what}")
    try:
        return start()
    except Exception as exc:
        why = f"failed to start: {type(exc).__name__}: {exc}"[:2000]
        status[name] = why
        log(f"{name}: {why}")
        return None
