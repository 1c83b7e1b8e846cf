"""Ingest without Redis: the fps sampler, the source factory, each source, and the loop
against a fake producer (queue full, Redis away, bad frames, an unknown model)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from framepool import codec
from framepool.errors import BadInput, BrokerUnavailable, QueueFull, UnknownModel
from framepool.settings import Settings
from producer.ingest import IngestConfig, run_ingest
from producer.sampling import FpsSampler
from producer.sources import FrameSource, SourceFrame, SyntheticSource, open_source
from producer.sources.base import Backoff, Stoppable, redact_url
from producer.sources.folder import FolderSource
from producer.sources.synthetic import SyntheticCamera
from producer.sources.video import VideoSource, is_complete_jpeg, is_live_url
from tests.video import encode_mjpeg, encode_video

# ---------------------------------------------------------------- the sampler


def chosen(times: Iterable[float], target: float | None, source_fps: float | None) -> list[int]:
    sampler = FpsSampler(target)
    return [i for i, t in enumerate(times) if sampler.take(t, source_fps)]


@pytest.mark.parametrize("anchor", [0.0, 1_763_840_000.123])  # stream time, epoch seconds
def test_a_25fps_4s_file_at_5fps_gives_20_frames_every_5th(anchor: float) -> None:
    times = [anchor + i / 25 for i in range(100)]
    assert chosen(times, 5, 25) == list(range(0, 100, 5))
    assert chosen(times, 5, None) == list(range(0, 100, 5))  # fps unknown: the same


@pytest.mark.parametrize("target", [25, 30, 1000, None])
def test_a_target_at_or_above_the_source_fps_takes_every_frame(target: float | None) -> None:
    times = [i / 25 for i in range(50)]
    assert chosen(times, target, 25) == list(range(50))


def test_uneven_ratios_are_spread_on_a_grid_without_drift() -> None:
    times = [i / 30 for i in range(90)]  # 3 s at 30 fps
    picks = chosen(times, 7, 30)
    assert len(picks) == 21  # 7 per second, exactly
    gaps = {b - a for a, b in zip(picks, picks[1:], strict=False)}
    assert gaps <= {4, 5}  # 30/7 = 4.29: never two in a row, never a long hole


def test_a_jittery_live_stream_keeps_its_rate() -> None:
    rng = np.random.default_rng(0)
    times = [i / 25 + rng.uniform(-0.001, 0.001) for i in range(250)]
    assert chosen(times, 12.5, 25) == list(range(0, 250, 2))


def test_a_gap_is_not_followed_by_a_burst_and_going_back_restarts() -> None:
    times = [0.0, 0.04, 0.08, 5.0, 5.04, 5.08, 5.2, 1.0, 1.04]
    assert chosen(times, 10, 25) == [0, 3, 6, 7]


def test_the_sampler_refuses_a_nonpositive_fps() -> None:
    with pytest.raises(BadInput, match="fps must be > 0"):
        FpsSampler(0)


# ---------------------------------------------------------------- the factory


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty source"),
        ("   ", "empty source"),
        ("no/such/file.mp4", "not found"),
        ("ftp://host/x.mp4", "unsupported source scheme ftp://"),
        ("rtsp://", "has no host"),
        ("/dev/video97", "V4L2 device /dev/video97 does not exist"),
        ("synthetic?colour=red", "unknown synthetic parameter 'colour'"),
        ("synthetic?fps=fast", "fps='fast' is not a number"),
        ("synthetic?width=8", "too small"),
        ("synthetic?fps=0", "fps must be > 0"),
    ],
)
def test_bad_sources_are_refused_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        open_source(spec, "cam")


def test_unreadable_files_and_empty_folders_are_bad_input(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BadInput, match="cannot open video source"):
        open_source(str(text), "cam")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="no images in"):
        open_source(str(empty), "cam")
    with pytest.raises(BadInput, match="needs a camera id"):
        open_source("synthetic", "")


def test_v4l2_refuses_what_is_not_a_capture_device() -> None:
    from producer.sources.v4l2 import V4L2Source

    with pytest.raises(BadInput, match="not a video device"):
        V4L2Source("/etc/hostname", "cam")  # a plain file
    # a character device, but no camera: no v4l2 in this PyAV build, or FFmpeg cannot open it
    with pytest.raises(BadInput, match="no v4l2 input format|cannot open video source"):
        V4L2Source("/dev/null", "cam")


def test_each_spec_opens_its_kind_of_source(tmp_path: Path) -> None:
    synth = open_source("synthetic?width=64&height=48&fps=25&seed=3&realtime=0", "s", count=3)
    assert isinstance(synth, SyntheticSource) and not synth.live and synth.fps == 25
    assert isinstance(open_source("synthetic", "s"), SyntheticSource)
    assert open_source("synthetic", "s").live  # paced like a camera by default
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    assert isinstance(open_source(str(tmp_path), "f"), FolderSource)
    one = open_source(str(tmp_path / "a.jpg"), "f")
    assert isinstance(one, FolderSource) and one.files == [tmp_path / "a.jpg"]
    video = encode_video(tmp_path / "v.mp4", SyntheticCamera("v", 64, 48, fps=25), 5)
    source = open_source(str(video), "v")
    assert isinstance(source, VideoSource) and not source.live
    source.close()
    for s in (synth, one, source):
        assert isinstance(s, FrameSource)


def test_each_synthetic_camera_gets_its_own_scene_unless_seeded() -> None:
    a, b = open_source("synthetic", "a"), open_source("synthetic", "b")
    assert isinstance(a, SyntheticSource) and isinstance(b, SyntheticSource)
    assert a.camera.seed != b.camera.seed
    again = open_source("synthetic", "a")
    assert isinstance(again, SyntheticSource) and again.camera.seed == a.camera.seed


def test_which_urls_are_live() -> None:
    assert is_live_url("rtsp://cam/1") and is_live_url("tcp://127.0.0.1:9000")
    assert is_live_url("http://host/stream.m3u8") and is_live_url("https://host/live")
    assert not is_live_url("https://host/clip.mp4") and not is_live_url("/data/clip.mp4")


def test_passwords_never_reach_logs() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert redact_url("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"


def test_a_refused_stream_url_is_bad_input_without_its_password() -> None:
    from framepool.redis_server import free_port

    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/stream"
    with pytest.raises(BadInput, match="cannot open video source") as info:
        open_source(url, "cam", open_timeout=5)
    assert "hunter2" not in str(info.value) and "admin:***@" in str(info.value)


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


# ---------------------------------------------------------------- the sources


def jpeg(seed: int) -> bytes:
    return codec.encode_jpeg(SyntheticCamera("x", 64, 48, seed=seed).frame(0).image)


def test_a_folder_passes_jpeg_and_png_through_in_natural_order(tmp_path: Path) -> None:
    image = SyntheticCamera("x", 64, 48, seed=2).frame(0).image
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    (tmp_path / "f10.jpg").write_bytes(jpeg(10))
    (tmp_path / "f2.png").write_bytes(png.getvalue())
    Image.fromarray(image).save(tmp_path / "f3.bmp")
    (tmp_path / "f4.jpg").write_bytes(b"\xff\xd8\xff garbage")  # passed on; the probe refuses it
    (tmp_path / "f5.bmp").write_bytes(b"BM not really")  # cannot be decoded: skipped, counted
    (tmp_path / "readme.txt").write_text("not an image")

    source = FolderSource(tmp_path, "dir", fps=5)
    frames = list(source)
    assert [f.seq for f in frames] == [0, 1, 2, 4]  # f2, f3, f4, f10; f5 skipped
    assert frames[0].image == png.getvalue()  # byte for byte, not re-encoded
    assert frames[-1].image == jpeg(10)
    assert isinstance(frames[1].image, np.ndarray) and np.array_equal(frames[1].image, image)
    assert source.decode_errors == 1
    assert frames[-1].captured_at - frames[0].captured_at == pytest.approx(4 / 5)


def test_a_folder_without_fps_stamps_frames_with_their_mtime(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    (tmp_path / "b.jpg").write_bytes(jpeg(2))
    import os

    os.utime(tmp_path / "a.jpg", (1000.0, 1000.0))
    os.utime(tmp_path / "b.jpg", (1002.5, 1002.5))
    assert [f.captured_at for f in FolderSource(tmp_path, "d")] == [1000.0, 1002.5]


def test_the_synthetic_source_counts_and_stamps_by_its_fps() -> None:
    cam = SyntheticCamera("syn", 64, 48, fps=20, seed=4)
    frames = list(SyntheticSource(cam, count=5, start=10, realtime=False))
    assert [f.seq for f in frames] == [10, 11, 12, 13, 14]
    assert all(f.camera_id == "syn" and f.fps == 20 for f in frames)
    assert np.array_equal(frames[2].image, cam.frame(12).image)
    gaps = [b.captured_at - a.captured_at for a, b in zip(frames, frames[1:], strict=False)]
    assert gaps == pytest.approx([0.05] * 4, abs=1e-6)  # epoch floats: 0.2 µs steps


def test_a_paced_synthetic_source_stops_when_closed_from_another_thread() -> None:
    source = SyntheticSource(SyntheticCamera("p", 64, 48, fps=5), realtime=True)
    got: list[SourceFrame] = []
    reader = threading.Thread(target=lambda: got.extend(source))
    reader.start()
    time.sleep(0.3)
    source.close()
    reader.join(2)
    assert not reader.is_alive() and 1 <= len(got) <= 3


def test_a_video_file_gives_each_frame_once_with_stream_timestamps(tmp_path: Path) -> None:
    cam = SyntheticCamera("v", 96, 64, fps=25, seed=6)
    source = VideoSource(str(encode_video(tmp_path / "v.mp4", cam, 12)), "v")
    assert source.fps == 25 and not source.live
    frames = list(source)
    assert [f.seq for f in frames] == list(range(12))
    assert all(f.image.shape == (64, 96, 3) for f in frames)  # type: ignore[union-attr]
    gaps = [b.captured_at - a.captured_at for a, b in zip(frames, frames[1:], strict=False)]
    assert gaps == pytest.approx([0.04] * 11, abs=1e-5)
    assert np.abs(frames[5].image.astype(int) - cam.frame(5).image).mean() < 8  # type: ignore[union-attr]
    assert list(source) == []  # a file is read once


def test_mjpeg_frames_are_passed_on_as_the_jpegs_they_are(tmp_path: Path) -> None:
    cam = SyntheticCamera("m", 96, 64, fps=25, seed=8)
    path = encode_mjpeg(tmp_path / "m.mkv", cam, 6)
    frames = list(VideoSource(str(path), "m"))
    assert [f.seq for f in frames] == list(range(6))
    assert all(isinstance(f.image, bytes) for f in frames)
    image = codec.decode(frames[4].image, max_bytes=1 << 20, max_pixels=1 << 20)  # type: ignore[arg-type]
    assert np.abs(image.astype(int) - cam.frame(4).image).mean() < 8
    decoded = list(VideoSource(str(path), "m", jpeg_passthrough=False))
    assert all(isinstance(f.image, np.ndarray) for f in decoded)


def test_a_jpeg_without_huffman_tables_is_not_complete() -> None:
    data = jpeg(3)
    assert is_complete_jpeg(data)
    stripped = data
    while b"\xff\xc4" in stripped[: stripped.index(b"\xff\xda")]:  # drop every DHT segment
        dht = stripped.index(b"\xff\xc4")
        length = int.from_bytes(stripped[dht + 2 : dht + 4], "big")
        stripped = stripped[:dht] + stripped[dht + 2 + length :]
    assert not is_complete_jpeg(stripped)
    assert not is_complete_jpeg(b"\x89PNG\r\n\x1a\n")


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
    # held back until the stop; then what was handed off went out without waiting
    assert summary["sent"] == len(producer.sent) <= 4 * 8


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
