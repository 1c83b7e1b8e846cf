"""One round trip to enqueue frames: the depth check, the claim-checked bytes, the
latest-frame mark and the message, for each frame, in one Lua call.

The producer builds each message with Celery and kombu as they would send it
(``framepool.broker.captured_publishes`` hands over the list and bytes kombu
would LPUSH), and :class:`Enqueuer` then runs :data:`ENQUEUE`: for each frame, in
order, while its model's queue (all priority lists) holds fewer than the limit,
it stores the frame's bytes (claim check), marks it its camera's newest
(latest-frame-wins) and pushes its message; otherwise it counts the frame as
``queue_full`` in the model's drop counter and stores nothing. Before, these were
two round trips (depths and bytes, then the messages), and two producers could
both see room for the same last place: the check and the push are one step now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from framepool import keys

#: KEYS: per model, its drop counter and its queue's lists (ARGV[5] of them); then per
#: frame, the list to push to, its frame key ('' when not claim-checked) and its
#: latest-frame key (''). ARGV: the limit, the frame TTL, the latest-frame TTL, the
#: number of models and of lists per model; then per frame its model's place (1..),
#: job id, bytes ('' when not claim-checked) and message. Returns, per frame, its
#: model's depth before it and 1 if it was pushed, else 0.
ENQUEUE = """
local limit, m, p = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local depth = {}
for j = 1, m do
  local d = 0
  for q = 1, p do
    d = d + redis.call('LLEN', KEYS[(j - 1) * (p + 1) + 1 + q])
  end
  depth[j] = d
end
local base = m * (p + 1)
local out = {}
for i = 1, (#ARGV - 5) / 4 do
  local a, k = 5 + (i - 1) * 4, base + (i - 1) * 3
  local j = tonumber(ARGV[a + 1])
  out[#out + 1] = depth[j]
  if depth[j] < limit then
    if KEYS[k + 2] ~= '' then redis.call('SET', KEYS[k + 2], ARGV[a + 3], 'EX', ARGV[2]) end
    if KEYS[k + 3] ~= '' then redis.call('SET', KEYS[k + 3], ARGV[a + 2], 'EX', ARGV[3]) end
    redis.call('LPUSH', KEYS[k + 1], ARGV[a + 4])
    depth[j] = depth[j] + 1
    out[#out + 1] = 1
  else
    redis.call('HINCRBY', KEYS[(j - 1) * (p + 1) + 1], 'queue_full', 1)
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame to enqueue: its message as kombu encoded it, and what goes with it."""

    model_id: str
    job_id: str
    queue_list: str  # the Redis list kombu would push the message to
    message: bytes
    frame: bytes | None = None  # claim-checked bytes, stored under keys.frame_data
    latest_key: str = ""  # latest-frame-wins: keys.latest_frame(model, camera)


@dataclass(frozen=True, slots=True)
class Placed:
    accepted: bool
    depth: int  # the model's queue depth just before this frame


class Enqueuer:
    """:data:`ENQUEUE`, registered on the client it last ran on."""

    _script: Any = None

    def __call__(
        self,
        client: redis.Redis,
        frames: Sequence[Outgoing],
        limit: int,
        frame_ttl: int,
        latest_ttl: int,
    ) -> list[Placed]:
        """Enqueue ``frames`` in order, each while its model's queue has room (one
        round trip); raises ``redis.RedisError`` when Redis is away."""
        if not frames:
            return []
        models = list(dict.fromkeys(f.model_id for f in frames))
        place = {m: j + 1 for j, m in enumerate(models)}
        lists_per = len(keys.queue_lists(models[0]))
        script_keys: list[str] = []
        for m in models:
            script_keys += [keys.dropped_counter(m), *keys.queue_lists(m)]
        args: list[str | bytes | int] = [limit, frame_ttl, latest_ttl, len(models), lists_per]
        for f in frames:
            frame_key = keys.frame_data(f.job_id) if f.frame is not None else ""
            script_keys += [f.queue_list, frame_key, f.latest_key]
            args += [place[f.model_id], f.job_id, f.frame or b"", f.message]
        script = self._script
        if script is None or script.registered_client is not client:
            script = self._script = client.register_script(ENQUEUE)
        out = script(keys=script_keys, args=args)
        return [Placed(bool(out[2 * i + 1]), int(out[2 * i])) for i in range(len(frames))]
