"""The monitor's access rules: the API token and a per-client rate limit.

- ``API_TOKEN`` (bearer, or ``?token=`` for browsers and WebSockets) guards
  ``/api/*`` and the stream; ``/metrics`` and ``/health`` stay open unless
  ``METRICS_REQUIRE_TOKEN``.
- Each client (by address) gets a token bucket: ``RATE_LIMIT_PER_SECOND``
  refilled, ``RATE_LIMIT_BURST`` deep (the reference's 10/s, burst 50).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping

from framepool.settings import Settings

#: Paths that are guarded only when METRICS_REQUIRE_TOKEN is set.
OPEN_PATHS = ("/metrics", "/health", "/ready")


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return query.get("token")


def token_ok(settings: Settings, presented: str | None) -> bool:
    """True when no token is configured, or the presented one matches (constant time)."""
    if not settings.api_token:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), settings.api_token.encode())


def needs_token(settings: Settings, path: str) -> bool:
    if not settings.api_token:
        return False
    if path.startswith("/api/"):
        return True
    return settings.metrics_require_token and path.startswith(OPEN_PATHS)


class RateLimiter:
    """Token buckets per client key; ``allow`` answers (allowed, seconds until the next token)."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, float]:
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 10_000:  # forget idle clients
                self._buckets = {
                    k: v for k, v in self._buckets.items() if now - v[1] < self.burst / self.rate
                }
            return False, (1.0 - tokens) / self.rate
