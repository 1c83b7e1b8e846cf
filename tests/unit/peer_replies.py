"""A ``Reply`` as the bench-peers clients hand one back, shared by the statistics
tests (test_bench_peers_stats.py) and the drivers' (test_bench_peers_clients.py)."""

from __future__ import annotations

from benchmarks.peers_clients import Reply


def _reply(at: float, inference: float = 10.0, batch: int = 8, added: float | None = None) -> Reply:
    return Reply(completed_at=at, inference_ms=inference, batch_size=batch, added_ms=added)
