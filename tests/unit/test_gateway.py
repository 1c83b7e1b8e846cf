"""The gateway's pure parts: frame checks and their status codes, the cluster view
behind /capabilities and /health (heartbeats on fakeredis)."""

from __future__ import annotations

import base64
import json
import struct

import fakeredis
import pytest
from fastapi.exceptions import RequestValidationError

from framepool import codec, keys
from framepool.manifest import discover
from framepool.settings import DEFAULT_MODELS_ROOT, Settings
from producer.gateway_cluster import capabilities, health, read_cluster
from producer.gateway_errors import ApiError
from producer.gateway_frames import check_frame, decode_base64, json_body_limit, parse_inference
from producer.sources.synthetic import SyntheticCamera
from tests.heartbeats import gpu_heartbeat, model_entry, publish

SETTINGS = Settings(max_frame_bytes=100_000, max_frame_pixels=1_000_000)
JPEG = codec.encode_jpeg(SyntheticCamera("u", 320, 240, seed=1).frame(0).image)


def png_header(width: int, height: int) -> bytes:
    """Just a PNG's signature and IHDR: all the probe reads."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return codec.PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + ihdr + bytes(4)


def refusal(fn, *args) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as caught:
        fn(*args)
    return caught.value.status, caught.value.error


def test_check_frame_codes() -> None:
    info = check_frame(JPEG, SETTINGS)
    assert (info.format, info.width, info.height) == ("jpeg", 320, 240)
    assert check_frame(png_header(1000, 1000), SETTINGS).format == "png"
    assert refusal(check_frame, b"", SETTINGS) == (400, "empty_frame")
    assert refusal(check_frame, b"GIF89a" + bytes(100), SETTINGS) == (415, "unsupported_media_type")
    assert refusal(check_frame, b"\xff\xd8\xff\xe0" + bytes(40), SETTINGS) == (400, "bad_frame")
    assert refusal(check_frame, png_header(1001, 1000), SETTINGS) == (413, "too_many_pixels")
    assert refusal(check_frame, JPEG + bytes(100_000), SETTINGS) == (413, "frame_too_large")


def test_decode_base64() -> None:
    text = base64.b64encode(JPEG).decode()
    assert decode_base64(text, 100_000) == JPEG
    assert decode_base64("data:image/jpeg;base64," + text, 100_000) == JPEG
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(wrapped, 100_000) == JPEG
    assert refusal(decode_base64, "not*base64!", 100_000) == (400, "invalid_base64")
    assert refusal(decode_base64, "AAAA" * 30_000, 80_000) == (413, "frame_too_large")
    # the largest frame allowed fits in the largest body allowed
    biggest = base64.b64encode(bytes(100_000)).decode()
    body = json.dumps({"model_id": "m", "frame_base64": biggest, "camera_id": "c" * 200})
    assert len(body) <= json_body_limit(100_000)
    assert decode_base64(biggest, 100_000) == bytes(100_000)


def test_parse_inference() -> None:
    req = parse_inference(b'{"model_id": "m", "frame_base64": "AAAA", "seq": 3, "extra": 1}')
    assert (req.model_id, req.seq, req.camera_id) == ("m", 3, None)
    assert refusal(parse_inference, b"{nope") == (400, "invalid_json")
    assert refusal(parse_inference, b"") == (400, "invalid_json")
    with pytest.raises(RequestValidationError):
        parse_inference(b'{"model_id": "m"}')
    with pytest.raises(RequestValidationError):
        parse_inference(b'{"model_id": "m", "frame_base64": "AAAA", "seq": -1}')


def test_cluster_view_capabilities_and_health() -> None:
    client = fakeredis.FakeRedis()
    view = read_cluster(client)
    assert view.served() == [] and health(view, SETTINGS, False)["status"] == "degraded"

    publish(client, gpu_heartbeat("a@h1", "h1", models={"resnet50": model_entry("resnet50")}))
    publish(
        client,
        gpu_heartbeat(
            "b@h2",
            "h2",
            models={
                "resnet50": model_entry("resnet50", state="degraded", errors=10),
                "resnet18": model_entry("resnet18", state="loading"),
            },
        ),
    )
    leaving = gpu_heartbeat("c@h3", "h3", models={"resnet18": model_entry("resnet18")})
    leaving["state"] = "stopping"
    publish(client, leaving)
    client.sadd(keys.WORKERS, "gone@h4")  # its heartbeat key expired
    client.set(keys.worker_heartbeat("junk@h5"), b"{not json")
    client.sadd(keys.WORKERS, "junk@h5")

    view = read_cluster(client)
    assert [w["name"] for w in view.workers] == ["a@h1", "b@h2", "c@h3"]
    assert view.state("resnet50") == "ready" and view.state("resnet18") == "loading"
    assert view.state("shape_detector") == "absent"
    assert view.served() == ["resnet50"]  # the stopping worker's resnet18 does not count

    caps = capabilities(view, discover(DEFAULT_MODELS_ROOT)[0], SETTINGS)
    models = {m["model_id"]: m for m in caps["models"]}
    assert caps["served_models"] == ["resnet50"]
    assert models["resnet50"]["served"] and len(models["resnet50"]["workers"]) == 2
    assert not models["resnet18"]["served"] and models["resnet18"]["state"] == "loading"
    assert models["shape_detector"]["labels"] and not models["shape_detector"]["served"]
    assert caps["frames"]["max_frame_pixels"] == 1_000_000

    body = health(view, SETTINGS, True)
    assert body["status"] == "healthy" and body["models_ready"] == 1
    assert body["workers_up"] == 3 and body["gpu_device_count"] == 3
    (r50,) = [m for m in body["models"] if m["model_id"] == "resnet50"]
    assert r50["inference_count"] == 200 and r50["error_count"] == 10
