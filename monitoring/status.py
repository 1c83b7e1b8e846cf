"""``framepool status``: the monitor's picture as terminal tables (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from monitoring.cluster import ClusterSnapshot, quantile_ms


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render_status(snap: ClusterSnapshot, active: list[Any]) -> Group:
    workers = Table(title="workers", title_justify="left")
    for col in ("worker", "host", "state", "device", "heartbeat", "models"):
        workers.add_column(col)
    for w in snap.workers:
        models = ", ".join(f"{m}:{e.get('state')}" for m, e in w.models.items())
        device = f"{w.device} (MPS)" if w.mps else w.device
        workers.add_row(w.name, w.hostname, w.state, device, f"{w.age_s:.1f}s ago", models)
    for name in snap.gone:
        workers.add_row(name, "-", "[red]gone[/red]", "-", "missing", "-")

    gpus = Table(title="GPUs", title_justify="left")
    for col in ("gpu", "name", "util", "memory", "temp", "power", "workers"):
        gpus.add_column(col)
    for d in snap.devices:
        mem = (
            f"{d.memory_used_mb:.0f}/{d.memory_total_mb:.0f} MB"
            if d.memory_used_mb is not None and d.memory_total_mb is not None
            else "-"
        )
        gpus.add_row(
            d.key,
            d.name or "-",
            _fmt(d.utilization_percent, "%"),
            mem,
            _fmt(d.temperature_c, "C", 0),
            _fmt(d.power_w, "W", 0),
            ", ".join(d.workers),
        )
    if not snap.devices:
        gpus.add_row("-", "no GPU readings (CPU workers or NVML unavailable)", "", "", "", "", "")

    table = Table(title="models and queues", title_justify="left")
    for col in ("model", "state", "frames", "errors", "expired", "p50", "p99", "queue", "oldest"):
        table.add_column(col)
    for mid in sorted(set(snap.models) | set(snap.queues)):
        m = snap.models.get(mid)
        q = snap.queues.get(mid)
        total = m.timings_ms.get("total") if m else None
        table.add_row(
            mid,
            m.state if m else "absent",
            str(m.frames if m else 0),
            str(m.errors if m else 0),
            str(m.expired if m else 0),
            _fmt(quantile_ms(total, 0.5) if total else None, " ms"),
            _fmt(quantile_ms(total, 0.99) if total else None, " ms"),
            str(q.depth if q else 0),
            _fmt(q.oldest_age_s if q else None, " s", 2),
        )

    alerts = Table(title=f"active alerts ({len(active)})", title_justify="left")
    for col in ("severity", "alert", "subject", "value", "since"):
        alerts.add_column(col)
    for a in active:
        colour = "red" if a.severity == "critical" else "yellow"
        value = "-" if a.value is None else f"{a.value:.1f}"
        alerts.add_row(
            f"[{colour}]{a.severity}[/{colour}]", a.message, a.subject, value, a.timestamp
        )
    return Group(workers, gpus, table, alerts)
