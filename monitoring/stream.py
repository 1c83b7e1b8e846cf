"""``WS /api/v1/gpu/stream``: one ``gpu_metrics`` message a second to every client.

- At most ``WS_MAX_CONNECTIONS`` clients; one more is refused at the handshake.
- Each client has a queue two messages deep: a client that cannot keep up is
  dropped rather than slowing the others (and a send that takes longer than
  ``WS_SEND_TIMEOUT_SECONDS`` drops it too).
- A client may send ``{"subscribe": {"kernels": [...], "workers": [...],
  "models": [...]}}`` (at most ``WS_MAX_MESSAGE_BYTES``) and then receives only
  those entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from framepool.log import get_logger

log = get_logger(__name__)

#: Subscription filter: key ("kernels" | "workers" | "models") -> names wanted.
Filters = dict[str, frozenset[str]]
FILTER_KEYS = ("kernels", "workers", "models")

# WebSocket close codes
TRY_AGAIN_LATER = 1013
MESSAGE_TOO_BIG = 1009
POLICY_VIOLATION = 1008


def parse_subscription(text: str) -> Filters:
    """``{"subscribe": {"models": ["a"]}}`` → filters; ValueError with a clear message."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from exc
    sub = data.get("subscribe") if isinstance(data, dict) else None
    if not isinstance(sub, dict):
        raise ValueError('expected {"subscribe": {"kernels"|"workers"|"models": [names]}}')
    filters: Filters = {}
    for key, names in sub.items():
        if key not in FILTER_KEYS:
            raise ValueError(f"unknown filter {key!r}; use one of {', '.join(FILTER_KEYS)}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"filter {key!r} must be a list of names")
        filters[key] = frozenset(names)
    return filters


def apply_filters(message: dict[str, Any], filters: Filters) -> dict[str, Any]:
    """The message with only the subscribed kernels, workers and models (and their queues)."""
    if not filters:
        return message
    out = dict(message)
    if "kernels" in filters:
        wanted = filters["kernels"]
        out["kernels"] = [k for k in message.get("kernels", []) if k.get("name") in wanted]
        out["recent_kernels"] = [
            k for k in message.get("recent_kernels", []) if k.get("name") in wanted
        ]
    if "workers" in filters:
        wanted = filters["workers"]
        out["workers"] = [w for w in message.get("workers", []) if w.get("name") in wanted]
        out["devices"] = [
            d for d in message.get("devices", []) if wanted & set(d.get("workers", []))
        ]
    if "models" in filters:
        wanted = filters["models"]
        out["models"] = {k: v for k, v in message.get("models", {}).items() if k in wanted}
        out["queues"] = {k: v for k, v in message.get("queues", {}).items() if k in wanted}
    return out


@dataclass(eq=False)
class _Client:
    ws: WebSocket
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=2))
    filters: Filters = field(default_factory=dict)
    dropped: bool = False


class StreamHub:
    """The set of connected clients and the fan-out of each message."""

    def __init__(self, max_connections: int, max_message_bytes: int, send_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.max_message_bytes = max_message_bytes
        self.send_timeout_s = send_timeout_s
        self.clients: set[_Client] = set()
        self.refused = 0
        self.dropped_slow = 0
        self.last: dict[str, Any] | None = None
        self._build: Callable[[], dict[str, Any]] | None = None

    async def serve(self, ws: WebSocket) -> None:
        if len(self.clients) >= self.max_connections:
            self.refused += 1
            log.warning("ws_refused", reason="connection cap", cap=self.max_connections)
            await ws.close(code=TRY_AGAIN_LATER, reason="too many connections")
            return
        await ws.accept()
        client = _Client(ws)
        self.clients.add(client)
        sender = asyncio.create_task(self._send_loop(client))
        if (last := self.latest()) is not None:
            self._offer(client, last)
        try:
            await self._receive_loop(client)
        finally:
            self.clients.discard(client)
            sender.cancel()

    async def _receive_loop(self, client: _Client) -> None:
        ws = client.ws
        while True:
            try:
                text = await ws.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                return
            if len(text.encode()) > self.max_message_bytes:
                await ws.close(code=MESSAGE_TOO_BIG, reason="message too big")
                return
            try:
                client.filters = parse_subscription(text)
            except ValueError as exc:
                await self._send_now(client, {"type": "error", "message": str(exc)})
                continue
            subscribed = {k: sorted(v) for k, v in client.filters.items()}
            await self._send_now(client, {"type": "subscribed", "filters": subscribed})
            if (last := self.latest()) is not None:
                self._offer(client, last)

    async def _send_now(self, client: _Client, message: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(client.ws.send_text(json.dumps(message)), self.send_timeout_s)
        except Exception:
            client.dropped = True

    async def _send_loop(self, client: _Client) -> None:
        while not client.dropped:
            text = await client.queue.get()
            try:
                await asyncio.wait_for(client.ws.send_text(text), self.send_timeout_s)
            except Exception:
                await self._drop(client, "send failed or too slow")
                return

    def _offer(self, client: _Client, message: dict[str, Any]) -> None:
        text = json.dumps(apply_filters(message, client.filters), default=str)
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(self._drop(client, "too slow"))

    async def _drop(self, client: _Client, reason: str) -> None:
        if client.dropped:
            return
        client.dropped = True
        self.clients.discard(client)
        self.dropped_slow += 1
        log.warning("ws_client_dropped", reason=reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.ws.close(code=POLICY_VIOLATION, reason=reason), 1.0)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for every client (never waits on any of them)."""
        self.last, self._build = message, None
        for client in list(self.clients):
            if not client.dropped:
                self._offer(client, message)

    def publish(self, build: Callable[[], dict[str, Any]]) -> None:
        """:meth:`broadcast` ``build()``, built only once some client needs it: now when
        one is connected, else when the next one connects (the monitor's 1 Hz message
        costs nothing while nobody watches)."""
        self.last, self._build = None, build
        if self.clients:
            message = self.latest()
            assert message is not None
            self.broadcast(message)

    def latest(self) -> dict[str, Any] | None:
        """The last message, built now if it was published but not built yet."""
        if self.last is None and self._build is not None:
            self.last, self._build = self._build(), None
        return self.last

    def stats(self) -> dict[str, int]:
        return {"clients": len(self.clients), "refused": self.refused, "dropped": self.dropped_slow}
