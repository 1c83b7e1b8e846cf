"""``framepool submit``, ``ingest`` and ``results``: frames into the queues, results out.

Each command imports ``producer`` inside itself; none of them loads torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from framepool.cli_common import EXIT_UNAVAILABLE, fail, load_settings, require_redis
from framepool.errors import BrokerUnavailable, FramepoolError


@click.command()
@click.option("--model", "model_id", required=True)
@click.option("--camera", "camera_id", default=None)
@click.option("--wait", is_flag=True, help="wait for and print each result")
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait per result")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def submit(
    model_id: str, camera_id: str | None, wait: bool, timeout: float, images: tuple[str, ...]
) -> None:
    """Enqueue image files; print job ids (or results with --wait) as JSON lines."""
    settings = load_settings()
    items: list[dict[str, Any]] = []
    for seq, path in enumerate(images):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}")
        items.append({"model_id": model_id, "frame": data, "camera_id": camera_id, "seq": seq})
    require_redis(settings)
    from producer import FrameProducer

    try:
        with FrameProducer(settings) as producer:
            handles = producer.submit_many(items)
            for path, h in zip(images, handles, strict=True):
                if not wait:
                    click.echo(
                        json.dumps(
                            {"file": path, "job_id": h.job_id, "correlation_id": h.correlation_id}
                        )
                    )
                    continue
                result = h.get(timeout=timeout)
                click.echo(json.dumps({"file": path, **result.model_dump(mode="json")}))
    except BrokerUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except FramepoolError as exc:
        fail(str(exc))


@click.command()
@click.option("--model", "model_id", required=True)
@click.option("--camera", "cameras", multiple=True, required=True,
              help="camera id; repeat it, one per --source, for several cameras")  # fmt: skip
@click.option("--source", "sources", multiple=True, required=True,
              help="FILE, FOLDER, rtsp://…, http(s)://…, tcp://…, /dev/videoN or synthetic[?fps=…]")  # fmt: skip
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None,
              help="frames/s to send per camera, chosen by timestamp [every frame]")  # fmt: skip
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              help="stop after S seconds [when the sources end]")  # fmt: skip
@click.option("--count", type=click.IntRange(1), default=None,
              help="stop each camera after N frames read (a synthetic camera never ends)")  # fmt: skip
@click.option("--deadline-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="a frame not started within this expires")  # fmt: skip
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 256),
              help="frames per Redis pipeline")  # fmt: skip
@click.option("--max-queued", default=256, show_default=True, type=click.IntRange(1),
              help="files and folders wait while the model's queue holds this many")  # fmt: skip
def ingest(
    model_id: str,
    cameras: tuple[str, ...],
    sources: tuple[str, ...],
    fps: float | None,
    duration: float | None,
    count: int | None,
    deadline_ms: float | None,
    batch_size: int,
    max_queued: int,
) -> None:
    """Camera ingest: decode sources, sample at --fps, enqueue; a JSON summary at the end.

    Several cameras: repeat --camera/--source pairs, matched in order
    (--camera a --source a.mp4 --camera b --source rtsp://host/b). Live sources
    reconnect when they drop and run until --duration, --count or Ctrl-C.
    See docs/ingest.md.
    """
    settings = load_settings()
    if len(cameras) != len(sources):
        fail(f"give one --source per --camera (got {len(cameras)} and {len(sources)})")
    interactive = sys.stdout.isatty()
    from framepool.log import configure_logging
    from producer.ingest import IngestConfig, run_ingest
    from producer.ingest_progress import LiveStderr
    from producer.sources import FrameSource, open_source

    if interactive:  # logs print above the progress display
        configure_logging(settings.model_copy(update={"log_format": "console"}), LiveStderr())
    else:
        configure_logging(settings)

    opened: list[FrameSource] = []
    try:
        config = IngestConfig(
            model_id,
            fps=fps,
            duration=duration,
            count=count,
            deadline_ms=deadline_ms,
            batch_size=batch_size,
            max_queued=max_queued,
        )
        for camera_id, spec in zip(cameras, sources, strict=True):
            opened.append(open_source(spec, camera_id))
        require_redis(settings)
        from producer import FrameProducer

        with FrameProducer(settings) as producer:
            summary = run_ingest(producer, opened, config, progress=interactive)
    except BrokerUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except FramepoolError as exc:
        fail(str(exc))
    finally:
        for source in opened:
            source.close()
    click.echo(json.dumps(summary))
    failed = [f"camera {c}: {v['error']}" for c, v in summary["cameras"].items() if v["error"]]
    if failed:
        fail("; ".join(failed), 1)


@click.command()
@click.option("--camera", "camera_id", required=True)
@click.option("--follow", is_flag=True, help="keep printing new results")
@click.option("--count", default=100, show_default=True, help="results to print first")
@click.option("--skip-late", is_flag=True, help="leave out results that came out of seq order")
def results(camera_id: str, follow: bool, count: int, skip_late: bool) -> None:
    """Print a camera's results (JSON lines) from its Redis stream.

    A result that arrived after one of a later frame (same camera and model)
    carries "late": true; --skip-late leaves those out, so seq only rises.
    """
    import redis

    from producer.results import CameraResults

    settings = load_settings()
    require_redis(settings)
    reader = CameraResults(redis.Redis.from_url(settings.redis_url), camera_id, skip_late=skip_late)
    for r in reader.recent(count):
        click.echo(r.as_json())
    if not follow:
        return
    try:
        for r in reader.follow():
            click.echo(r.as_json())
    except KeyboardInterrupt:
        pass
