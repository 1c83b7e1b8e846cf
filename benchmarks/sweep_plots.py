"""``framepool bench sweep``'s plots: one PNG per axis (matplotlib, Agg backend).

matplotlib is optional (the ``bench`` extra): without it :func:`render` writes
nothing and says why, and the bench still writes its tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MISSING = "matplotlib is not installed (pip install 'matplotlib>=3.7'; it is in the bench extra)"
FILES = {
    "cameras": "sweep-cameras.png",
    "frame_size": "sweep-frame-size.png",
    "workers": "sweep-workers.png",
    "batch_cap": "sweep-batch-cap.png",
    "redis_memory": "sweep-redis-memory.png",
}


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def render(report: dict[str, Any], out_dir: Path) -> tuple[dict[str, Path], str | None]:
    """Write a plot for every axis in ``report``; ``(axis -> path, why skipped)``."""
    from benchmarks.sweep_report import build_figures

    plt = _pyplot()
    if plt is None:
        return {}, MISSING
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    machine = report.get("machine", {})
    where = f"{machine.get('nproc', '?')} CPUs, {machine.get('cpu', '?')}"
    for axis, data in report["axes"].items():
        rows = build_figures(axis, data)
        if not rows:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        try:
            DRAW[axis](left, right, rows, data)
            fig.suptitle(f"framepool bench sweep: {axis.replace('_', ' ')} ({data['date']}, {where})",
                         fontsize=10)  # fmt: skip
            fig.tight_layout()
            path = out_dir / FILES[axis]
            fig.savefig(path, dpi=110)
            written[axis] = path
        finally:
            plt.close(fig)
    return written, None


def _xs(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def _log2_axis(ax: Any, xs: list[float], labels: list[str]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.minorticks_off()


def _get(rows: list[dict[str, Any]], key: str) -> list[float]:
    """The rows' ``key`` values, NaN (a gap in the line) where a row lacks one."""
    return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]


def _latency(ax: Any, x: list[float], rows: list[dict[str, Any]], prefix: str, what: str) -> None:
    ax.plot(x, _get(rows, f"{prefix}_p50_ms"), "o-", label=f"{what} p50")
    ax.plot(x, _get(rows, f"{prefix}_p99_ms"), "s-", label=f"{what} p99")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _throughput(ax: Any, x: list[float], rows: list[dict[str, Any]]) -> None:
    ax.plot(x, [r["steady_fps"] for r in rows], "o-", label="frames/s (median)")
    for r, xi in zip(rows, x, strict=True):
        ax.annotate(f"{r['fps_rel']:.2f}x", (xi, r["steady_fps"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
    ax.set_ylabel("frames/s")
    ax.set_ylim(0, 1.15 * max(r["steady_fps"] for r in rows))  # room for the labels
    ax.grid(True, alpha=0.3)


def _cameras(left: Any, right: Any, rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    x = _xs(rows, "cameras")
    left.plot(x, [r["offered_fps"] for r in rows], "--", color="grey", label="offered")
    _throughput(left, x, rows)
    left.legend(fontsize=8)
    left.set_title(f"{data['model']}: achieved throughput", fontsize=10)
    _latency(right, x, rows, "client", "client")
    right.plot(x, _get(rows, "added_p99_ms"), "^:", label="added p99")
    right.legend(fontsize=8)
    right.set_title("latency (submit to result)", fontsize=10)
    for ax in (left, right):
        _log2_axis(ax, x, [r["label"] for r in rows])
        ax.set_xlabel("cameras")


def _frame_size(left: Any, right: Any, rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    x = [r["width"] * r["height"] / 1e6 for r in rows]
    _throughput(left, x, rows)
    left.set_title(f"{data['model']}: closed-loop throughput", fontsize=10)
    _latency(right, x, rows, "service", "service")
    twin = right.twinx()  # decode is milliseconds where service is hundreds of them
    twin.plot(x, _get(rows, "decode_ms"), "^:", color="C2", label="decode, median (right axis)")
    twin.set_ylabel("decode ms")
    twin.set_ylim(bottom=0)
    lines = right.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    right.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8)
    right.set_title("per-frame latency in the worker", fontsize=10)
    for ax in (left, right, twin):
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([r["label"] for r in rows], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("frame (megapixels, log scale)")


def _workers(left: Any, right: Any, rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    x = _xs(rows, "workers")
    base = rows[0]["steady_fps"] / rows[0]["workers"]
    left.plot(x, [base * xi for xi in x], "--", color="grey", label="linear")
    _throughput(left, x, rows)
    left.legend(fontsize=8)
    left.set_title(f"{data['model']}: throughput", fontsize=10)
    _latency(right, x, rows, "service", "service")
    right.set_title("per-frame latency in the worker", fontsize=10)
    for ax in (left, right):
        _log2_axis(ax, x, [r["label"] for r in rows])
        ax.set_xlabel("worker processes per device")


def _batch_cap(left: Any, right: Any, rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    x = _xs(rows, "batch_cap")
    _throughput(left, x, rows)
    left.set_title(f"{data['model']}: closed-loop throughput", fontsize=10)
    _latency(right, x, rows, "service", "service")
    right.set_title("per-frame latency in the worker", fontsize=10)
    for ax in (left, right):
        _log2_axis(ax, x, [r["label"] for r in rows])
        ax.set_xlabel("MAX_BATCH_SIZE")


def _redis_memory(left: Any, right: Any, rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    sizes = list(dict.fromkeys(f"{r['width']}x{r['height']}" for r in rows))
    modes = list(dict.fromkeys(r.get("mode", "in message") for r in rows))
    x = list(range(len(sizes)))
    w = 0.8 / (len(modes) + 1)

    def values(mode: str, key: str) -> list[float]:
        by_size = {
            f"{r['width']}x{r['height']}": r for r in rows if r.get("mode", "in message") == mode
        }
        return [by_size[s][key] if s in by_size else float("nan") for s in sizes]

    jpeg = {f"{r['width']}x{r['height']}": r["jpeg_bytes"] for r in rows}
    left.bar([xi - 0.4 + w / 2 for xi in x], [jpeg[s] / 1024 for s in sizes], w, color="C0",
             label="JPEG")  # fmt: skip
    for i, mode in enumerate(modes, start=1):
        kb = [v / 1024 for v in values(mode, "used_bytes_per_frame")]
        colour = f"C{i}"
        left.bar([xi - 0.4 + w / 2 + i * w for xi in x], kb, w, color=colour,
                 label=f"used_memory, {mode}")  # fmt: skip
        right.plot(x, values(mode, "used_ratio"), "o-", color=colour,
                   label=f"used_memory / JPEG, {mode}")  # fmt: skip
    right.axhline(4 / 3, color="grey", linestyle=":", label="base64 (4/3)")
    right.axhline(1.0, color="grey", linestyle="-", linewidth=0.5)
    left.set_ylabel("KB per queued frame")
    left.set_title(f"{data['frames']} frames queued per size, no worker", fontsize=10)
    right.set_ylim(bottom=0)
    right.set_title("Redis bytes per JPEG byte", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(x)
        ax.set_xticklabels(sizes, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)


DRAW = {
    "cameras": _cameras,
    "frame_size": _frame_size,
    "workers": _workers,
    "batch_cap": _batch_cap,
    "redis_memory": _redis_memory,
}
