"""Ingest's loop without Redis, against a fake producer: sampling and batching per
camera, count, deadline and duration, queue full under both policies, Redis away,
bad frames, an unknown model, back-pressure, stopping while a file waits, and bad
config."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from framepool import codec
from framepool.errors import BadInput, BrokerUnavailable, QueueFull, UnknownModel
from framepool.settings import Settings
from producer.ingest import IngestConfig, run_ingest
from producer.sources import SourceFrame, SyntheticSource
from producer.sources.base import Stoppable
from producer.sources.synthetic import SyntheticCamera

# ---------------------------------------------------------------- the loop


class FakeProducer:
    """``submit_many`` and ``queue_depth`` as FrameProducer answers them, recorded."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(_env_file=None, **settings)
        self.batches: list[list[dict[str, Any]]] = []
        self.down_calls = 0  # the next N calls raise BrokerUnavailable
        self.refuse: set[int] = set()  # seqs refused as queue full
        self.unknown = False
        self.depth = 0

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [item for b in self.batches for item in b]

    def _maybe_down(self) -> None:
        if self.down_calls > 0:
            self.down_calls -= 1
            raise BrokerUnavailable("cannot enqueue: Redis unreachable: connection refused")

    def queue_depth(self, model_id: str) -> int:
        self._maybe_down()
        return self.depth

    def submit_many(self, items: Iterable[Mapping[str, Any]]) -> list[Any]:
        items = [dict(i) for i in items]
        if self.unknown:
            inner = UnknownModel(items[0]["model_id"], ["shape_detector"])
            raise UnknownModel(f"item 0: {inner}") from inner  # what the SDK raises
        for i, item in enumerate(items):
            try:
                codec.probe(item["frame"], max_bytes=1 << 30, max_pixels=1 << 30)
            except BadInput as exc:
                raise type(exc)(f"item {i}: {exc}") from exc
        self._maybe_down()
        handles = [
            _Handle(QueueFull("m", 1, 1) if i["seq"] in self.refuse else None) for i in items
        ]
        self.batches.append([i for i, h in zip(items, handles, strict=True) if h.refused is None])
        if any(h.refused for h in handles) and self.settings.queue_full_policy == "reject":
            exc = QueueFull("m", 1, 1)
            exc.handles = handles  # type: ignore[attr-defined]
            raise exc
        return handles


class _Handle:
    def __init__(self, refused: QueueFull | None) -> None:
        self.refused = refused


class ListSource(Stoppable):
    """Frames from a list; ``live`` as asked; ``gap`` seconds between frames."""

    def __init__(self, camera_id: str, frames: list[SourceFrame], *, live: bool, gap: float = 0):
        super().__init__()
        self.camera_id, self.frames, self.live, self.gap = camera_id, frames, live, gap

    @property
    def name(self) -> str:
        return f"list {self.camera_id}"

    def __iter__(self) -> Iterator[SourceFrame]:
        for f in self.frames:
            if self.stopped or (self.gap and self._sleep(self.gap)):
                return
            yield f


def accounted(summary: dict[str, Any]) -> bool:
    """Every frame read is skipped, sent or dropped, exactly once."""
    return all(
        c["read"] == c["skipped"] + c["sent"] + sum(c["dropped"].values())
        for c in summary["cameras"].values()
    )


def synthetic_frames(camera_id: str, n: int, fps: float = 25) -> list[SourceFrame]:
    cam = SyntheticCamera(camera_id, 64, 48, fps=fps, seed=1)
    return [SourceFrame(camera_id, s, 100 + s / fps, cam.frame(s).image, fps) for s in range(n)]


def test_two_files_are_sampled_by_timestamp_and_sent_in_batches() -> None:
    producer = FakeProducer()
    sources = [
        ListSource("a", synthetic_frames("a", 100), live=False),
        ListSource("b", synthetic_frames("b", 50, fps=10), live=False),
    ]
    summary = run_ingest(producer, sources, IngestConfig("m", fps=5, batch_size=4))
    assert summary["read"] == 150 and summary["sent"] == 20 + 25 and summary["dropped"] == {}
    assert summary["cameras"]["a"]["skipped"] == 80 and summary["cameras"]["b"]["skipped"] == 25
    assert accounted(summary)
    by_cam = {c: [i["seq"] for i in producer.sent if i["camera_id"] == c] for c in "ab"}
    assert by_cam == {"a": list(range(0, 100, 5)), "b": list(range(0, 50, 2))}
    assert max(len(b) for b in producer.batches) <= 4
    item = producer.sent[0]
    assert item["model_id"] == "m" and item["frame"][:3] == b"\xff\xd8\xff"  # JPEG-encoded
    assert item["captured_at"] == 100.0 and item["latest_wins"] is False
    assert "deadline_ms" not in item


def test_count_and_deadline_are_applied_per_camera() -> None:
    producer = FakeProducer()
    source = SyntheticSource(SyntheticCamera("s", 64, 48, fps=10), realtime=False)  # endless
    summary = run_ingest(producer, [source], IngestConfig("m", count=7, deadline_ms=250))
    assert summary["read"] == summary["sent"] == 7
    assert {i["deadline_ms"] for i in producer.sent} == {250}


def test_a_live_source_stops_after_its_duration() -> None:
    producer = FakeProducer()
    source = SyntheticSource(SyntheticCamera("live", 64, 48, fps=50))
    started = time.monotonic()
    summary = run_ingest(producer, [source], IngestConfig("m", duration=0.5))
    assert time.monotonic() - started < 5
    assert summary["read"] >= 1 and summary["sent"] == summary["read"]
    assert "latest_wins" not in producer.sent[0]  # a live camera keeps the model's policy


@pytest.mark.parametrize("policy", ["reject", "drop"])
def test_frames_refused_as_queue_full_are_counted_per_policy(policy: str) -> None:
    producer = FakeProducer(queue_full_policy=policy)
    producer.refuse = {3, 4}
    source = ListSource("q", synthetic_frames("q", 10), live=True)
    summary = run_ingest(producer, [source], IngestConfig("m", batch_size=10))
    assert summary["sent"] == 8 and summary["dropped"] == {"queue_full": 2}
    assert accounted(summary)
    assert 3 not in [i["seq"] for i in producer.sent]


def test_bad_frames_are_counted_and_the_rest_still_go() -> None:
    frames = synthetic_frames("bad", 6)
    frames[2] = SourceFrame("bad", 2, 100.08, np.zeros((4, 4), np.uint8), 25)  # wrong shape
    frames[4] = SourceFrame("bad", 4, 100.16, b"\xff\xd8\xff\xe0 not a jpeg", 25)
    producer = FakeProducer()
    summary = run_ingest(producer, [ListSource("bad", frames, live=False)], IngestConfig("m"))
    assert summary["sent"] == 4 and summary["dropped"] == {"bad_frame": 2}
    assert accounted(summary)
    assert [i["seq"] for i in producer.sent] == [0, 1, 3, 5]


def test_redis_away_live_frames_are_counted_lost_and_file_frames_wait() -> None:
    producer = FakeProducer()
    producer.down_calls = 3
    live = ListSource("live", synthetic_frames("live", 20), live=True, gap=0.02)
    file = ListSource("file", synthetic_frames("file", 20), live=False)
    summary = run_ingest(producer, [live, file], IngestConfig("m", broker_retry_max_s=0.1))
    cams = summary["cameras"]
    assert cams["file"]["sent"] == 20 and cams["file"]["dropped"] == {}  # waited, all sent
    lost = cams["live"]["dropped"].get("broker_unavailable", 0)
    assert lost >= 1 and cams["live"]["sent"] + lost == 20
    assert accounted(summary)
    assert [i["seq"] for i in producer.sent if i["camera_id"] == "file"] == list(range(20))


def test_an_unknown_model_stops_the_ingest_with_the_sdks_own_message() -> None:
    producer = FakeProducer()
    producer.unknown = True
    source = SyntheticSource(SyntheticCamera("u", 64, 48, fps=10), realtime=False)
    with pytest.raises(UnknownModel) as info:
        run_ingest(producer, [source], IngestConfig("nope"))
    assert str(info.value) == "unknown model 'nope'; known models: shape_detector"
    assert source.stopped


def test_files_wait_while_the_models_queue_is_full() -> None:
    producer = FakeProducer()
    producer.depth = 10
    source = ListSource("w", synthetic_frames("w", 5), live=False)
    result: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: result.update(
            run_ingest(producer, [source], IngestConfig("m", max_queued=10))
        )
    )
    runner.start()
    time.sleep(0.3)
    assert producer.sent == []  # held back, not dropped
    producer.depth = 0
    runner.join(5)
    assert result["sent"] == 5 and result["dropped"] == {}


def test_stopping_while_files_wait_for_room_ends_and_accounts_for_every_frame() -> None:
    producer = FakeProducer()
    producer.depth = 10  # no worker: the model's queue stays full
    source = ListSource("full", synthetic_frames("full", 200), live=False)
    started = time.monotonic()
    summary = run_ingest(producer, [source], IngestConfig("m", duration=0.3, max_queued=10))
    assert time.monotonic() - started < 5
    assert summary["read"] < 200 and accounted(summary)
    # held back until the stop; then what was handed off went out without waiting: the
    # hand-off queue, and the one frame its reader was putting in as the sender made room
    assert summary["sent"] == len(producer.sent) <= 4 * 8 + 1


def test_bad_config_and_duplicate_cameras_are_bad_input() -> None:
    with pytest.raises(BadInput, match="fps"):
        IngestConfig("m", fps=0)
    with pytest.raises(BadInput, match="duration"):
        IngestConfig("m", duration=-1)
    with pytest.raises(BadInput, match="unique"):
        run_ingest(
            FakeProducer(),
            [ListSource("x", [], live=False), ListSource("x", [], live=False)],
            IngestConfig("m"),
        )
