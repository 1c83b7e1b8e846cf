"""Waiting for results in the gateway's event loop, over Redis pub/sub.

Celery's Redis result backend stores each result under
``celery-task-meta-<job_id>`` and publishes it on a channel of the same name.
``AsyncResult.get`` listens for it on one pub/sub connection that all threads
share: with many requests waiting at once, each thread reads messages meant
for others and notices its own only when its read times out, up to half a
second later. Here one reader task owns the connection. A waiter subscribes to
its job's channel, then reads the key (a result stored before the subscription
is found there), and is woken by the reader the moment the result is published.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from framepool import keys
from framepool.log import get_logger

log = get_logger(__name__)


class ResultWaiter:
    """``await waiter.wait(job_id, timeout)``: the job's raw stored result, or None."""

    def __init__(self, redis_url: str) -> None:
        self.client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5)
        self.pubsub = self.client.pubsub()
        self.waiting: dict[str, list[asyncio.Future[bytes]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the reader; it subscribes when Redis answers (the gateway starts without it)."""
        self._reader = asyncio.create_task(self._read(), name="gateway-results")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
            await self.client.aclose()

    async def wait(self, job_id: str, timeout: float) -> bytes | None:
        key = keys.celery_result(job_id)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, []).append(fut)
        try:
            if len(self.waiting[key]) == 1:
                await self.pubsub.subscribe(key)
            stored = await self.client.get(key)
            if stored is not None and not fut.done():
                fut.set_result(stored)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            left = [f for f in self.waiting.get(key, []) if f is not fut]
            if left:
                self.waiting[key] = left
            else:
                self.waiting.pop(key, None)
                with contextlib.suppress(Exception):
                    await self.pubsub.unsubscribe(key)

    async def _read(self) -> None:
        while True:
            try:
                if not self.pubsub.subscribed:
                    # pub/sub reads need a subscription: a channel nothing publishes on
                    await self.pubsub.subscribe("framepool:gateway:results")
                msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: waiters time out; keep reading
                log.warning("gateway_results_read_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if not msg or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            key = channel.decode() if isinstance(channel, bytes) else str(channel)
            for fut in self.waiting.get(key, []):
                if not fut.done():
                    fut.set_result(msg["data"])
