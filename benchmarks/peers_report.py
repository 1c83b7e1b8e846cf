"""``framepool bench peers``: its figures, its text, and its section of docs/benchmarks.md.

The section is added at the end of the file the first time (a description and
two marked blocks); after that each run rewrites the *latest* block and appends
a row to the *history* table. Nothing outside the markers is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, median, print_rows, ratio, report_head, update_doc_section

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-peers:latest:begin -->", "<!-- bench-peers:latest:end -->"
#: a run on a GPU has a latest block of its own: it does not replace the CPU's
GPU_BEGIN, GPU_END = "<!-- bench-peers:gpu:begin -->", "<!-- bench-peers:gpu:end -->"
GPU_HEADING = "### Latest run on a GPU (peers)"
HIST_BEGIN, HIST_END = "<!-- bench-peers:history:begin -->", "<!-- bench-peers:history:end -->"

ORDER = ("direct", "framepool", "ray_handle", "ray_http", "triton_grpc", "triton_http")
LABELS = {
    "direct": "direct call (tight loop / in-process model thread)",
    "framepool": "framepool (worker process, FrameProducer)",
    "ray_handle": "Ray Serve @serve.batch, DeploymentHandle",
    "ray_http": "Ray Serve @serve.batch, HTTP",
    "triton_grpc": "Triton (PyTriton), gRPC",
    "triton_http": "Triton (PyTriton), HTTP",
}
SHORT = {
    "direct": "direct call",
    "framepool": "framepool",
    "ray_handle": "Ray handle",
    "ray_http": "Ray HTTP",
    "triton_grpc": "Triton gRPC",
    "triton_http": "Triton HTTP",
}
PEER_SYSTEMS = {"ray": ("ray_handle", "ray_http"), "triton": ("triton_grpc", "triton_http")}

INTRO = """
## `framepool bench peers`

```
framepool bench peers --frames 400 --repeats 3      # ~9-10 min on 2 quiet cores
framepool bench peers --frames 64 --repeats 1 --no-docs   # a smoke run, ~2 min
framepool bench peers --model resnet50 --batch 64 --clients 8 --frames 4000 --repeats 1   # a GPU
```

Issue #7: put the cameras behind framepool instead of calling the model
directly, or instead of Ray Serve or Triton: what is gained or lost? One run
on one machine measures all of them with the same model (`resnet18` from
`models/`, on `cuda:0` when CUDA is available, else the CPU), the same torch
threads, the same frames (16 distinct 640x480 synthetic-camera JPEGs, q90), the
same batch cap (8, with a 5 ms wait for a batch to fill where the system has
one) and the same work per frame: `framepool.codec.decode` (reduced DCT scale
down to the model's input size), `model.preprocess`, one batched forward pass
under `torch.inference_mode`, `model.postprocess`
(`benchmarks/peers_model.py`, shared by the in-process model, Ray and Triton).

- **direct** (the limit): closed loop, `benchmarks.pipeline_tight_loop.tight_loop`
  (batches of 8 in one process, as in `bench pipeline` (a)); open loop, the
  camera app calling the model itself: frames go into an in-process queue and
  one model thread runs whatever is waiting, up to 8, without waiting for more.
- **framepool**: `framepool worker --device cpu|cuda:0 --models resnet18`
  (`MAX_BATCH_SIZE=8`, default `BATCH_TIMEOUT_MS` 5), frames in with
  `FrameProducer.submit_many`, results read with `FrameHandle.get`.
- **Ray Serve** (`ray[serve]`): a private one-node cluster (`ray start --head`
  as a sandbox child: free ports, `--num-cpus 2`, no dashboard, usage stats
  off, temp dir in the sandbox; everything on 127.0.0.1, which takes
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, else Ray swaps 127.0.0.1 for the
  host's routable address, and a rebind of the replica's inter-deployment gRPC
  server, which Ray Serve 2.60 opens on `[::]:0` with no setting); one replica whose `infer` method is
  decorated with `@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)`
  and calls the model directly in that method (not in a thread, which the
  issue reports costs a third of Ray's throughput); `max_ongoing_requests=64`
  so batches can fill. Driven through a `DeploymentHandle` (`.remote()`,
  `.result()`) and over HTTP (`POST /resnet18`, the JPEG as the body, via
  Serve's proxy, from 64 `httpx.AsyncClient`s of one connection each: one
  client with 64 connections cost 17 ms of CPU a frame, beside Ray's replicas).
- **Triton** (`nvidia-pytriton`): a Python model bound with dynamic batching
  (`max_batch_size=8`, `max_queue_delay_microseconds=5000`), the JPEG sent as a
  BYTES input, decode + preprocess + forward + postprocess in the `@batch`
  infer function of a sandbox child (`python -m benchmarks.peers_triton`).
  Requests go tritonserver -> Python backend stub -> PyTriton's proxy
  (ZeroMQ + shared memory) -> the infer function. Driven by PyTriton's
  `AsyncioModelClient` over gRPC and over HTTP.

**Another model, a GPU.** `--model`, `--batch` and `--device` set the model,
the batch cap and the device of every system alike (by default `resnet18`, 8,
and `cuda:0` when CUDA is available, else the CPU). Each frame is readied as
framepool's worker readies it (`benchmarks.peers_model.prepare`): where the
model decodes JPEG on its device (nvJPEG, `model.accepts_jpeg`) only the header
is checked on the CPU and the bytes go on, and the batch is pinned before its
copy to the GPU. On a GPU the limit is `bench gpu`'s loop (one decode thread
per CPU readies the next batches while the GPU runs this one) instead of the
tight loop; framepool runs `--replicas` workers on the device, Ray's replicas
ask for 1/replicas of the one GPU (`ray start --num-gpus 1`), Triton's
instances share it. The closed loop keeps 4-8 batches in flight. A GPU outruns
one client process (`bench gpu`: ~0.45 ms of producer CPU a frame), so
`--clients N` drives every system from N processes of its own (each with its
own `FrameProducer`, Ray driver with `serve.get_app_handle`, HTTP clients or
PyTriton client; 2-4 batches in flight each; the open loop's cameras dealt out,
camera k to process k mod N, from one start time), whose CPU counts as the
client's. A run on a GPU writes its own block, "Latest run on a GPU (peers)",
and leaves the CPU's. On an offline GPU host: `benchmarks/gpu_host/run.sh
peers` (docs/gpu-host.md).

For each system: **closed-loop throughput** (4-8 batches outstanding; frames/s
from the servers' completion stamps after the first 10%, counting the frames
completed after the first kept stamp, so batches of 8 sharing a stamp do not
inflate it; the tight loop is frames / wall time) and **open-loop latency** at
`--load` (50%) of the tight loop's rate (batches of 8) measured at the start
of the run: `--latency-frames` frames from `--cameras` (4) cameras, each at a
quarter of that rate from its own seeded random phase, sent on schedule
whatever the replies do (no coordinated omission), p50/p99 from send to reply
on the client. *Overhead* is that latency less the forward pass of the frame's
batch. *Added latency (model idle)* is that latency less every forward pass that
ran while the frame was in flight (its own batch's, and those of the earlier
batches it waited behind, which the direct call waits for too): the time spent
moving, decoding, batching and answering while the model had nothing to do, the
part a faster server could remove (`benchmarks.peers_stats.model_idle_ms`, from
each reply's forward-pass span on the server's clock and its send and reply
times on the client's, the same host). framepool's worker-stamped figure
(completed - enqueued - inference, as `bench pipeline` (c)) is given too. Half the batch-8 rate is more
than half of what one frame at a time can do (a batch of 1 costs more per
frame), so at this load the systems run small batches and queueing shows. Every figure is given as a
ratio against *direct* measured in the same run. All systems are started once
and stay up; per repeat the closed-loop runs, then the open-loop runs, each in
an order rotated by one per repeat; medians of the repeats. CPU per frame
(server processes, and the benchmark process as the client) comes from `/proc`;
*idle* is what each system's servers burn while nothing is sent (they all stay
up during the others' runs). Everything runs on 127.0.0.1 in a sandbox that is
stopped at the end, on failure and on Ctrl-C. Results go to
`benchmarks/results/peers.json` and the block below.

The peers are optional (`pip install -e '.[bench]'`): without them the bench
runs *direct* and *framepool* and reports each missing peer as
`not installed (pip install -e '.[bench]')`; a peer that cannot run here is
reported with the reason, and one that fails mid-run is dropped with its error.

Running PyTriton here (Python 3.11 from pyenv, glibc 2.36, no GPU, no Docker):

- `nvidia-pytriton` 0.7.0 requires `numpy<2`; `pip install -e '.[bench]'`
  therefore installs numpy 1.26.4 in place of 2.x. With numpy 2 (the wheel
  installed with `--no-deps`), the server starts but its Python backend stub
  misreads every BYTES input (`deserialize_bytes_tensor` reads a length of
  185273099 from a 15-byte tensor) and dies: "Stub process is not healthy".
  The bench checks numpy's version and says so instead of running it.
- The stub links `libpython3.11.so.1.0` by name; the loader found Debian's
  3.11.2 in `/lib` while the stdlib on `sys.path` was pyenv's 3.11.7, and the
  stub failed on `'_thread.RLock' object has no attribute '_recursion_count'`.
  The bench puts the running interpreter's `LIBDIR` first on the child's
  `LD_LIBRARY_PATH`.
- tritonserver logs that CUDA is unavailable (no driver) and runs the Python
  model on the CPU; it needs no GPU and no Docker.

### Latest run (peers)

{BEGIN}
No run recorded yet: `framepool bench peers` rewrites this block.
{END}

### History (peers)

{HIST_BEGIN}
{HIST_HEADER}
{HIST_END}
"""

HIST_HEADER = (
    "| date | command | machine | versions | frames/s (x direct): direct, framepool, "
    "Ray handle, Ray HTTP, Triton gRPC, Triton HTTP | p50 / p99 ms at the open-loop load, "
    "same order | run time |\n|---|---|---|---|---|---|---|"
)


# ------------------------------------------------------------------ figures
def build_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Medians per system and their ratios against *direct* from the same run."""
    closed = report["details"]["closed"]
    opened = report["details"]["open"]
    base_fps = _med(closed.get("direct"), "steady_fps")
    base_p50 = _med(opened.get("direct"), "e2e_p50_ms")
    base_p99 = _med(opened.get("direct"), "e2e_p99_ms")
    figs: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        c, o = closed.get(name), opened.get(name)
        if not c and not o:
            continue
        f: dict[str, Any] = {"label": LABELS[name]}
        if c:
            runs = [r["steady_fps"] for r in c]
            f["fps"] = round(median(runs), 2)
            f["fps_runs"] = runs
            f["fps_ratio"] = _ratio(f["fps"], base_fps)
            direct_runs = [r["steady_fps"] for r in closed.get("direct", [])]
            if len(direct_runs) == len(runs):
                f["fps_ratio_runs"] = [_ratio(v, b) for v, b in zip(runs, direct_runs, strict=True)]
            f["closed_batch"] = round(_med(c, "mean_batch_size"), 2)
            f["cpu_ms_per_frame"] = _cpu(c)
        if o:
            for key in ("e2e_p50_ms", "e2e_p99_ms", "overhead_p50_ms", "overhead_p99_ms",
                        "inference_p50_ms", "mean_batch_size"):  # fmt: skip
                f[key] = round(_med(o, key), 3)
            f["p50_runs"] = [x["e2e_p50_ms"] for x in o]
            f["p99_runs"] = [x["e2e_p99_ms"] for x in o]
            f["p50_ratio"] = _ratio(f["e2e_p50_ms"], base_p50)
            f["p99_ratio"] = _ratio(f["e2e_p99_ms"], base_p99)
            for key in ("added", "model_idle"):
                if all(f"{key}_p50_ms" in x for x in o):
                    f[f"{key}_p50_ms"] = round(_med(o, f"{key}_p50_ms"), 3)
                    f[f"{key}_p99_ms"] = round(_med(o, f"{key}_p99_ms"), 3)
            f["open_cpu_ms_per_frame"] = _cpu(o)
        figs[name] = f
    return figs


def _med(runs: list[dict[str, Any]] | None, key: str) -> float:
    return median(r[key] for r in runs) if runs else float("nan")


def _ratio(value: float, base: float) -> float:
    return round(ratio(value, base), 3)


def _cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = runs[0]["cpu_ms_per_frame"]
    return {k: round(median(r["cpu_ms_per_frame"][k] for r in runs), 3) for k in keys}


# ------------------------------------------------------------------ text
def _x(r: float | None) -> str:
    return "-" if r is None or r != r else f"{r:.2f}x"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for f in report["figures"].values():
        fps = f"{f['fps']:.1f}" if "fps" in f else "-"
        p50 = f"{f['e2e_p50_ms']:.1f}" if "e2e_p50_ms" in f else "-"
        p99 = f"{f['e2e_p99_ms']:.1f}" if "e2e_p99_ms" in f else "-"
        over = f"{f['overhead_p50_ms']:.1f}" if "overhead_p50_ms" in f else "-"
        idle = (
            f"{f['model_idle_p50_ms']:.1f} / {f['model_idle_p99_ms']:.1f}"
            if "model_idle_p50_ms" in f
            else "-"
        )
        fwd = f"{f['inference_p50_ms']:.1f}" if "inference_p50_ms" in f else "-"
        batch = f"{f.get('closed_batch', float('nan')):.1f} / {f.get('mean_batch_size', float('nan')):.1f}"
        cpu = f.get("cpu_ms_per_frame", {})
        cpu_cell = f"{cpu.get('server', 0.0):.1f} + {cpu.get('client', 0.0):.1f}" if cpu else "-"
        runs = ", ".join(f"{v:.1f}" for v in f.get("fps_runs", []))
        rows.append([f["label"], fps, _x(f.get("fps_ratio")), p50, _x(f.get("p50_ratio")),
                     p99, _x(f.get("p99_ratio")), over, idle, fwd, batch, cpu_cell,
                     runs or "-"])  # fmt: skip
    return rows


HEADER = [
    "system",
    "frames/s (closed loop)",
    "vs direct",
    "p50 ms (open loop)",
    "vs direct",
    "p99 ms",
    "vs direct",
    "overhead p50 ms",
    "added p50 / p99 ms (model idle)",
    "forward p50 ms (open loop)",
    "mean batch closed / open",
    "CPU ms/frame (closed loop) server + client",
    "frames/s repeats",
]


def _md_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def not_measured(report: dict[str, Any]) -> list[str]:
    """One line per peer that did not run, or was dropped, and why."""
    lines = []
    for peer, why in report["peers"].items():
        if why is not None:
            lines.append(f"- {peer}: {why}")
    for name, why in report.get("failed", {}).items():
        lines.append(f"- {LABELS.get(name, name)}: dropped mid-run: {why}")
    return lines


def _replicas(cfg: dict[str, Any]) -> str:
    n = cfg.get("replicas", 1)
    if n == 1:
        return ""
    each = max(1, cfg["torch_threads"] // n)
    return (f"; framepool, Ray and Triton each serve {n} replicas of {each} torch thread(s) "
            f"(framepool: {n} worker processes, Ray: num_replicas={n}, Triton: {n} model "
            f"instances), the direct call " + (
                f"{n} model threads sharing one model" if cfg.get("direct_replicas") == n
                else f"one model with {cfg['torch_threads']}"))  # fmt: skip


def _device(report: dict[str, Any]) -> str:
    cfg, m = report["config"], report["machine"]
    where = f"{m['gpu']} ({cfg['device']})" if m.get("gpu") else cfg["device"]
    clients = cfg.get("clients", 1)
    driven = (f"; every system driven from {clients} client processes (camera k in process "
              f"k mod {clients})" if clients > 1 else "")  # fmt: skip
    limit = "; the limit: `bench gpu`'s loop (decode threads feeding the GPU)" if (
        cfg.get("limit") == "gpu.LimitLoop") else ""  # fmt: skip
    return (f"- model {cfg.get('model', 'resnet18')}, device {where}, torch threads "
            f"{cfg['torch_threads']}" + _replicas(cfg) + driven + limit)  # fmt: skip


def latest_block(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    v = m["versions"]
    figs = report["figures"]
    lines = [
        *report_head(report),
        _device(report),
        f"- versions: Python {v['python']}, torch {v['torch']}, Celery {v['celery']}, "
        f"redis-server {v.get('redis-server', '?')}, ray {v.get('ray', '-')}, "
        f"nvidia-pytriton {v.get('nvidia-pytriton', '-')}, tritonclient "
        f"{v.get('tritonclient', '-')}, numpy {v.get('numpy', '?')}",
        f"- batch cap {cfg['max_batch_size']} and a {cfg['batch_wait_ms']:g} ms batch wait "
        f"everywhere; {cfg['frames']} frames per closed-loop run ({cfg['loop_frames']} for the "
        f"tight loop), {cfg['latency_frames']} frames per open-loop run at "
        f"{cfg['open_fps']:.1f} frames/s ({cfg['load']:g} x the tight loop's "
        f"{cfg['calibration_fps']:.1f} frames/s at the start) from {cfg['cameras']} cameras, "
        f"{cfg['repeats']} repeat(s), 640x480 JPEG (~{cfg['jpeg_kb']} KB)",
        "",
        *_md_table(table_rows(report)),
    ]
    missing = not_measured(report)
    if missing:
        lines += ["", "Not measured:", "", *missing]
    fp = figs.get("framepool", {})
    if "model_idle_p50_ms" in fp:
        others = [
            f"{SHORT[n]} {f['model_idle_p50_ms']:.2f} / {f['model_idle_p99_ms']:.2f}"
            for n, f in figs.items()
            if n != "framepool" and "model_idle_p50_ms" in f
        ]
        lines += [
            "",
            f"Added latency in the open loop, the time a frame is in flight while no forward "
            f"pass runs (*model idle*): framepool p50 {fp['model_idle_p50_ms']:.2f} ms, p99 "
            f"{fp['model_idle_p99_ms']:.2f} ms (issue #7: <= 5 / <= 15 ms); p50 / p99 of the "
            f"others: {'; '.join(others) or '-'}.",
        ]
    if "added_p50_ms" in fp:
        lines += [
            "",
            f"framepool's latency beyond its own batch's forward pass, from the worker's "
            f"stamps (completed - enqueued - inference, as `bench pipeline` (c); it includes "
            f"waiting for earlier frames' forward passes): p50 {fp['added_p50_ms']:.2f} ms, "
            f"p99 {fp['added_p99_ms']:.2f} ms.",
        ]
    idle = report.get("idle_cpus", {})
    if idle:
        lines += [
            "",
            "Idle cost (CPUs' worth burnt by each system's server processes while nothing "
            "is sent): " + ", ".join(f"{k} {val:.3f}" for k, val in idle.items()) + ".",
        ]
    lines += ["", _noise_line(report)]
    return "\n".join(lines)


def _noise_line(report: dict[str, Any]) -> str:
    values = [
        r["cpu_ms_per_frame"].get("others_cpus", 0.0)
        for kind in ("closed", "open")
        for runs in report["details"][kind].values()
        for r in runs
    ]
    worst = max(values) if values else 0.0
    return (
        f"Noise: processes outside the system measured (incl. the other systems' idle "
        f"servers) kept at most {worst:.2f} CPUs busy during one run (`/proc/stat`)."
    )


def history_row(report: dict[str, Any]) -> str:
    figs = report["figures"]
    m = report["machine"]
    v = m["versions"]

    def fps(name: str) -> str:
        f = figs.get(name)
        if not f or "fps" not in f:
            return "-"
        return f"{f['fps']:.1f}" if name == "direct" else f"{f['fps']:.1f} ({_x(f['fps_ratio'])})"

    def lat(name: str) -> str:
        f = figs.get(name)
        if not f or "e2e_p50_ms" not in f:
            return "-"
        return f"{f['e2e_p50_ms']:.1f} / {f['e2e_p99_ms']:.1f}"

    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']}, "
        f"{report['config']['device']} | py {v['python']}, torch {v['torch']}, "
        f"ray {v.get('ray', '-')}, pytriton {v.get('nvidia-pytriton', '-')} | "
        + ", ".join(fps(n) for n in ORDER)
        + " | "
        + ", ".join(lat(n) for n in ORDER)
        + f" | {report['runtime_s']:.0f} s |"
    )


def intro() -> str:
    marks = {"BEGIN": BEGIN, "END": END, "HIST_BEGIN": HIST_BEGIN, "HIST_END": HIST_END}
    return INTRO.format(**marks, HIST_HEADER=HIST_HEADER)


def is_gpu(report: dict[str, Any]) -> bool:
    return str(report["config"]["device"]).startswith("cuda")


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    """Replace the latest-run block (the GPU's for a run on a GPU) and append a row to
    the history table."""
    gpu = is_gpu(report)
    update_doc_section(path, (BEGIN, END, HIST_BEGIN, HIST_END), intro(),
                       None if gpu else latest_block(report), HIST_HEADER,
                       history_row(report))  # fmt: skip
    if not gpu:
        return
    text = path.read_text(encoding="utf-8")
    if GPU_BEGIN not in text or GPU_END not in text:  # first GPU run: its block goes
        hist = text.index("### History (peers)")  # before the history
        text = f"{text[:hist]}{GPU_HEADING}\n\n{GPU_BEGIN}\n{GPU_END}\n\n{text[hist:]}"
    head, rest = text.split(GPU_BEGIN, 1)
    _, tail = rest.split(GPU_END, 1)
    path.write_text(f"{head}{GPU_BEGIN}\n{latest_block(report)}\n{GPU_END}{tail}", encoding="utf-8")


def print_summary(report: dict[str, Any]) -> None:
    print_rows(HEADER, table_rows(report))
    for line in not_measured(report):
        print(line)
    idle = report.get("idle_cpus", {})
    if idle:
        print("idle CPUs: " + ", ".join(f"{k} {val:.3f}" for k, val in idle.items()))
