"""A small load generator for the HTTP gateway: N concurrent clients over real HTTP.

Each request is ``POST /v1/frames/{model}?wait=true`` with a raw JPEG body and an
``X-Request-ID``; a request counts as good when the gateway answers 200 with an
``ok`` result carrying that correlation id. The report holds the latencies, the
errors by kind and the throughput, and says which of the reference document's
targets (p50 < 100 ms, p99 < 500 ms, errors < 1 %) a run met.

Used by the pytest load tests (tests/load) and written into docs/benchmarks.md
by ``make load``; the targets are reported, never asserted in ``make test``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TARGET_P50_MS = 100.0
TARGET_P99_MS = 500.0
TARGET_ERROR_RATE = 0.01
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "load"


@dataclass
class LoadReport:
    name: str
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.total if self.total else 0.0

    def percentile(self, q: float) -> float:
        lat = sorted(self.latencies_ms)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(round(q / 100.0 * (len(lat) - 1))))]

    def missed_targets(self) -> list[str]:
        missed = []
        if not self.percentile(50) < TARGET_P50_MS:
            missed.append(f"p50 {self.percentile(50):.1f} ms >= {TARGET_P50_MS:.0f} ms")
        if not self.percentile(99) < TARGET_P99_MS:
            missed.append(f"p99 {self.percentile(99):.1f} ms >= {TARGET_P99_MS:.0f} ms")
        if not self.error_rate < TARGET_ERROR_RATE:
            missed.append(f"errors {self.error_rate:.2%} >= {TARGET_ERROR_RATE:.0%}")
        return missed

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "clients": self.clients,
            "requests": self.total,
            "ok": len(self.latencies_ms),
            "errors": dict(self.errors),
            "error_rate": self.error_rate,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
            "throughput_per_s": len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0,
            "wall_s": self.wall_s,
            "missed_targets": self.missed_targets(),
        }

    def save(self, extra: dict[str, Any] | None = None) -> Path:
        """Write the report as JSON under tests/artifacts/load/ (``make load`` collects them)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}.json"
        path.write_text(json.dumps({**self.as_dict(), **(extra or {})}, indent=2) + "\n")
        return path


async def _request(
    client: httpx.AsyncClient, model_id: str, frame: bytes, report: LoadReport
) -> None:
    cid = uuid.uuid4().hex
    began = time.perf_counter()
    try:
        r = await client.post(
            f"/v1/frames/{model_id}",
            params={"wait": "true", "timeout": "30"},
            content=frame,
            headers={"Content-Type": "image/jpeg", "X-Request-ID": cid},
        )
    except httpx.HTTPError as exc:
        report.errors[type(exc).__name__] += 1
        return
    ms = (time.perf_counter() - began) * 1000.0
    if r.status_code != 200:
        report.errors[f"http_{r.status_code}"] += 1
    elif (body := r.json()).get("status") != "ok":
        report.errors[f"result_{body.get('status')}"] += 1
    elif body.get("correlation_id") != cid or r.headers.get("X-Request-ID") != cid:
        report.errors["wrong_correlation_id"] += 1
    else:
        report.latencies_ms.append(ms)


async def _client_loop(
    client: httpx.AsyncClient,
    model_id: str,
    frames: list[bytes],
    report: LoadReport,
    take: Any,
    interval_s: float | None,
) -> None:
    while (i := take()) is not None:
        began = time.perf_counter()
        await _request(client, model_id, frames[i % len(frames)], report)
        if interval_s is not None:
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - began)))


async def _run(
    base_url: str,
    model_id: str,
    frames: list[bytes],
    report: LoadReport,
    requests: int | None,
    duration_s: float | None,
    rate_per_client: float | None,
) -> None:
    # One client, one connection each, as cameras are. With one AsyncClient shared by
    # 50 tasks the generator spent ~12 ms of CPU per request (3 ms this way), most of
    # it in httpx's pool (encode/httpx#3215): it, not the gateway, set the pace
    # (docs/benchmarks.md, "The load generator was the bottleneck").
    # Made before the clock starts, as each costs milliseconds (its TLS context).
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=1))
        for _ in range(report.clients)
    ]
    sent = 0
    ends = time.monotonic() + duration_s if duration_s else float("inf")

    def take() -> int | None:
        nonlocal sent
        if (requests is not None and sent >= requests) or time.monotonic() >= ends:
            return None
        sent += 1
        return sent - 1

    interval = 1.0 / rate_per_client if rate_per_client else None
    try:
        began = time.perf_counter()
        await asyncio.gather(
            *(_client_loop(client, model_id, frames, report, take, interval) for client in clients)
        )
        report.wall_s += time.perf_counter() - began
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


def run_load(
    name: str,
    base_url: str,
    model_id: str,
    frames: list[bytes],
    *,
    clients: int,
    requests: int | None = None,
    duration_s: float | None = None,
    rate_per_client: float | None = None,
    report: LoadReport | None = None,
) -> LoadReport:
    """``clients`` concurrent clients send ``requests`` frames (or for ``duration_s``);
    ``rate_per_client`` paces each client (requests per second). Pass ``report``
    to add this run to an earlier one (bursts)."""
    if requests is None and duration_s is None:
        raise ValueError("give requests or duration_s")
    report = report or LoadReport(name, clients)
    asyncio.run(_run(base_url, model_id, frames, report, requests, duration_s, rate_per_client))
    return report
