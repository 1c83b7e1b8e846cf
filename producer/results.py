"""Reading a camera's results from its Redis stream, in the order they were delivered.

Workers append each result to ``framepool:results:<camera_id>``. Per (camera,
model) the stream holds results in ``seq`` order: a result that arrives after
one of a later frame (a slower worker, a redelivery) is appended marked
``late`` rather than inserted, so a reader that skips late entries sees seq only
rising, and one that wants everything knows which ones came out of order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from framepool import keys
from framepool.errors import BrokerUnavailable
from framepool.schemas import InferenceResult


@dataclass(frozen=True, slots=True)
class StreamedResult:
    entry_id: str  # the stream entry's id, to resume from
    late: bool  # a result of a later frame of this camera and model came first
    raw: dict[str, Any]

    @property
    def result(self) -> InferenceResult:
        return InferenceResult.model_validate(self.raw)

    def as_json(self) -> str:
        """The result as one JSON line, with ``"late": true`` when it came out of order."""
        return json.dumps({**self.raw, "late": True} if self.late else self.raw)


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamedResult:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return StreamedResult(eid, fields.get(b"order") == b"late", json.loads(fields[b"result"]))


class CameraResults:
    """``CameraResults(client, "cam1")``: the last results, then new ones as they come."""

    def __init__(self, client: redis.Redis, camera_id: str, *, skip_late: bool = False) -> None:
        if not camera_id:
            raise ValueError("camera_id must be a non-empty string")
        self.client = client
        self.stream = keys.result_stream(camera_id)
        self.skip_late = skip_late
        self.last_id: str | None = None  # None: start after what is there now

    def recent(self, count: int = 100) -> list[StreamedResult]:
        """The last ``count`` results, oldest first; ``follow`` continues after them."""
        try:
            entries = self.client.xrevrange(self.stream, count=max(count, 1))[::-1]
        except redis.RedisError as exc:
            raise BrokerUnavailable.from_redis(exc) from exc
        out = [_entry(eid, fields) for eid, fields in entries]
        self.last_id = out[-1].entry_id if out else "0-0"
        out = out[-count:] if count > 0 else []
        return [r for r in out if not (self.skip_late and r.late)]

    def follow(self, block_ms: int = 1000) -> Iterator[StreamedResult]:
        """New results as they arrive (forever; stop iterating to stop)."""
        if self.last_id is None:
            self.recent(1)
        while True:
            try:
                replies = self.client.xread(
                    {self.stream: str(self.last_id)}, block=block_ms, count=500
                )
            except redis.RedisError as exc:
                raise BrokerUnavailable.from_redis(exc) from exc
            for _, entries in replies or []:
                for eid, fields in entries:
                    r = _entry(eid, fields)
                    self.last_id = r.entry_id
                    if not (self.skip_late and r.late):
                        yield r
