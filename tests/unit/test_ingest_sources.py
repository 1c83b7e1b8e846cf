"""Ingest's sources without Redis: the factory (each spec to its kind of source, bad
specs refused with a clear message, passwords kept out of errors and logs, the
reconnect backoff) and each source (folder, synthetic, video file, MJPEG passed
through, incomplete JPEGs)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepool import codec
from framepool.errors import BadInput
from producer.sources import FrameSource, SourceFrame, SyntheticSource, open_source
from producer.sources.base import Backoff, redact_url
from producer.sources.folder import FolderSource
from producer.sources.synthetic import SyntheticCamera
from producer.sources.video import VideoSource, is_complete_jpeg, is_live_url
from tests.video import encode_mjpeg, encode_video

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
