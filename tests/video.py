"""Real video for ingest tests: files encoded with PyAV, and an MPEG-TS server over TCP.

``python -m tests.video serve --port P --seconds S --start N`` listens on
``tcp://127.0.0.1:P`` (FFmpeg's ``listen=1``: one client), streams synthetic
frames ``N, N+1, ...`` at 25 fps for S seconds of wall time after the client
connects, then closes: a camera that goes away.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import av

from producer.sources.synthetic import SyntheticCamera

ROOT = Path(__file__).resolve().parent.parent


def video_codec() -> str:
    """H.264 when this PyAV build has libx264, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_video(path: Path, camera: SyntheticCamera, count: int) -> Path:
    """``count`` frames of ``camera`` (from seq 0) at its own fps, nearly lossless."""
    codec = video_codec()
    options = {"crf": "16", "preset": "veryfast"} if codec == "libx264" else {"qscale": "2"}
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=round(camera.fps), options=options)
        stream.width, stream.height, stream.pix_fmt = camera.width, camera.height, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000
        for seq in range(count):
            frame = av.VideoFrame.from_ndarray(camera.frame(seq).image, format="rgb24")
            frame.pts = seq
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def encode_mjpeg(path: Path, camera: SyntheticCamera, count: int) -> Path:
    """``count`` frames of ``camera`` as Motion JPEG (each frame a JPEG) in Matroska."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=round(camera.fps))
        stream.width, stream.height, stream.pix_fmt = camera.width, camera.height, "yuvj420p"
        for seq in range(count):
            frame = av.VideoFrame.from_ndarray(camera.frame(seq).image, format="rgb24")
            frame.pts = seq
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def start_stream_server(port: int, seconds: float, start: int = 0) -> subprocess.Popen[bytes]:
    """The TCP MPEG-TS server as a child process (it exits when its seconds are streamed)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.video",
            "serve",
            "--port",
            str(port),
            "--seconds",
            str(seconds),
            "--start",
            str(start),
        ],  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _serve(port: int, seconds: float, start: int) -> None:
    camera = SyntheticCamera("tcp", 160, 120, fps=25, seed=5)
    out = av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts")
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    stream.bit_rate = 1_000_000
    n, n0, t0 = 0, 0, None
    while t0 is None or time.monotonic() - t0 < seconds:
        frame = av.VideoFrame.from_ndarray(camera.frame(start + n).image, format="rgb24")
        frame.pts = n
        packets = stream.encode(frame)
        out.mux(packets)  # the first write opens the socket and waits for the client
        if t0 is None and packets:
            t0, n0 = time.monotonic(), n
        n += 1
        if t0 is not None:
            time.sleep(max(0.0, t0 + (n - n0) / 25 - time.monotonic()))
    out.mux(stream.encode(None))
    out.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args()
    _serve(args.port, args.seconds, args.start)
