"""FrameProducer's enqueue against a real Redis: one round trip per call, the depth
check and the push in one step, and nothing stored for a refused frame."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from framepool import keys
from framepool.settings import Settings
from producer import FrameProducer
from tests.unit.test_codec import jpeg

MODEL = "shape_detector"


def _commands(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Redis commands ``client`` sends from now on (their names)."""
    sent: list[str] = []
    real = client.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return real(*args, **options)

    monkeypatch.setattr(client, "execute_command", counted)
    return sent


def test_a_submit_and_a_whole_list_each_cost_one_round_trip(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FrameProducer(settings) as p:
        p.submit(MODEL, jpeg())  # the script is loaded once
        sent = _commands(p.redis, monkeypatch)
        p.submit(MODEL, jpeg(), camera_id="c", seq=1)
        p.submit_many([{"model_id": MODEL, "frame": jpeg(), "seq": i} for i in range(5)])
        assert sent == ["EVALSHA", "EVALSHA"]
        assert p.queue_depth(MODEL) == 7


def test_two_producers_never_fill_a_queue_past_its_limit(settings: Settings) -> None:
    s = settings.model_copy(update={"max_queue_depth": 40, "queue_full_policy": "drop"})
    accepted: list[int] = []
    go = threading.Barrier(2)

    def send() -> None:
        with FrameProducer(s) as p:
            go.wait()
            n = 0
            for _ in range(10):
                handles = p.submit_many([{"model_id": MODEL, "frame": jpeg()} for _ in range(3)])
                n += sum(h.refused is None for h in handles)
            accepted.append(n)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(accepted) == 40
    client = redis.Redis.from_url(s.redis_url)
    assert client.llen(keys.queue_name(MODEL)) == 40
    assert int(client.hget(keys.dropped_counter(MODEL), "queue_full") or 0) == 20
    assert len(client.keys(keys.frame_data("*"))) == 40  # the refused ones' bytes: never stored


def test_the_latest_frame_mark_is_the_newest_accepted_frame(settings: Settings) -> None:
    s = settings.model_copy(update={"max_queue_depth": 2, "queue_full_policy": "drop"})
    with FrameProducer(s) as p:
        items = [{"model_id": MODEL, "frame": jpeg(), "camera_id": "cam", "latest_wins": True,
                  "seq": i} for i in range(3)]  # fmt: skip
        handles = p.submit_many(items)
    assert [h.refused is None for h in handles] == [True, True, False]
    client = redis.Redis.from_url(s.redis_url)
    newest = client.get(keys.latest_frame(MODEL, "cam"))
    assert newest is not None and newest.decode() == handles[1].job_id  # not the refused one
