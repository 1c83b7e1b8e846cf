"""The ``framepool ingest --progress`` display: one rich row per camera, and log lines above it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from producer.ingest import Ingest


class LiveStderr:
    """``sys.stderr`` looked up at each write: log lines printed while the progress display
    runs go through rich's redirect, above the display, instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class ProgressView:
    """One rich progress row per camera (and a total row for several): read, sent, dropped, rate."""

    def __init__(self, ingest: Ingest) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            refresh_per_second=4,
        )
        rows = list(ingest.stats) + (["all cameras"] if len(ingest.stats) > 1 else [])
        self.rows = {r: self.progress.add_task(r, total=None, counts="") for r in rows}

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, ingest: Ingest) -> None:
        s = ingest.summary()
        rows = {**s["cameras"], "all cameras": s}
        for name, task in self.rows.items():
            c = rows[name]
            cam = ingest.stats.get(name)
            done = ingest.ended_at is not None or (cam is not None and cam.done)
            elapsed = s["duration_s"]
            if cam is not None and cam.ended_at is not None and ingest.started_at is not None:
                elapsed = cam.ended_at - ingest.started_at  # a finished camera's rate stays put
            counts = (
                f"read {c['read']}  sent {c['sent']}  skipped {c['skipped']}  "
                f"dropped {sum(c['dropped'].values())}  {c['sent'] / max(elapsed, 1e-9):.1f} frames/s"
            )
            self.progress.update(
                task, counts=counts, total=1 if done else None, completed=int(done)
            )
