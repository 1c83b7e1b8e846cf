"""The HTTP gateway as a real process (``framepool gateway``) over real HTTP.

A real Redis, a real ``shape_detector`` worker, the reference's ``/inference``
JSON, the raw ``/v1/frames`` route and job polling; every bad input with its
status code and error body; Redis down; the API token; the gateway's metrics.
"""

from __future__ import annotations

import base64
import io
import re
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from framepool import codec
from framepool.redis_server import free_port
from models.zoo.shape_detector.evaluate import match
from producer.sources.synthetic import SyntheticCamera, SyntheticFrame
from tests.faults import png_bomb

MODEL = "shape_detector"
TOKEN = "gateway-test-token"
MAX_FRAME_BYTES = 200_000
CONCURRENT = 16


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(frame: SyntheticFrame) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame.image).save(out, format="PNG")
    return out.getvalue()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float:
    if family not in fams:
        return 0.0
    return sum(
        s.value
        for s in fams[family].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def assert_error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == error, body
    assert isinstance(body["message"], str) and body["message"], body
    assert r.headers["X-Request-ID"], "every answer echoes a request id"
    return body


def test_frames_through_a_real_worker(start_worker, start_gateway) -> None:
    start_worker([MODEL], extra=["--name", "gw@test"], HEARTBEAT_INTERVAL_SECONDS="0.3")
    gw = start_gateway()
    before = families(gw.get("/metrics").text)
    cam = SyntheticCamera("gwcam", 640, 480, seed=21)

    # POST /inference: the reference JSON, X-Request-ID as the correlation id
    frame = cam.frame(3)
    r = gw.post(
        "/inference",
        json={
            "model_id": MODEL,
            "frame_base64": b64(codec.encode_jpeg(frame.image)),
            "camera_id": "gwcam",
            "seq": 3,
            "captured_at": frame.timestamp,
        },
        headers={"X-Request-ID": "req-abc123"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-ID"] == "req-abc123"
    body = r.json()
    assert body["status"] == "ok" and body["model_id"] == MODEL
    assert body["correlation_id"] == body["request_id"] == "req-abc123"
    assert (body["camera_id"], body["seq"], body["worker"]) == ("gwcam", 3, "gw@test")
    tp, fp, fn = match(body["outputs"]["detections"], frame.objects)
    assert tp >= 1 and fn == 0, body["outputs"]

    # without the header, the body's correlation id is used and echoed
    r = gw.post(
        "/inference",
        json={
            "model_id": MODEL,
            "frame_base64": b64(codec.encode_jpeg(cam.frame(4).image)),
            "correlation_id": "body-cid-4",
        },
    )
    assert r.status_code == 200 and r.json()["correlation_id"] == "body-cid-4"
    assert r.headers["X-Request-ID"] == "body-cid-4"

    # concurrent callers each get their own result (the waits run on a thread pool)
    def call(seq: int) -> httpx.Response:
        jpeg = codec.encode_jpeg(cam.frame(seq).image)
        return gw.post(
            "/inference",
            json={"model_id": MODEL, "frame_base64": b64(jpeg), "camera_id": "gwcam", "seq": seq},
            headers={"X-Request-ID": f"conc-{seq}"},
        )

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(call, range(100, 100 + CONCURRENT)))
    for seq, r in enumerate(answers, start=100):
        assert r.status_code == 200, r.text
        assert (r.json()["seq"], r.json()["correlation_id"]) == (seq, f"conc-{seq}")
        assert r.headers["X-Request-ID"] == f"conc-{seq}" and r.json()["status"] == "ok"

    # POST /v1/frames (a PNG this time): 202, then poll the job until it is done
    frame = cam.frame(5)
    r = gw.post(
        f"/v1/frames/{MODEL}",
        content=png(frame),
        params={"camera_id": "gwcam", "seq": 5},
        headers={"X-Request-ID": "raw-5", "Content-Type": "image/png"},
    )
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["correlation_id"] == "raw-5" and queued["status"] == "queued"
    assert r.headers["Location"] == f"/v1/jobs/{queued['job_id']}"
    deadline = time.monotonic() + 30
    job: dict[str, Any] = {"status": "pending"}
    seen = set()
    while job["status"] == "pending" and time.monotonic() < deadline:
        resp = gw.get(f"/v1/jobs/{queued['job_id']}")
        assert resp.status_code == 200, resp.text
        job = resp.json()
        seen.add(job["status"])
        time.sleep(0.05)
    assert job["status"] == "ok", job
    assert seen <= {"pending", "ok"}
    assert (job["job_id"], job["correlation_id"], job["seq"]) == (queued["job_id"], "raw-5", 5)
    assert match(job["outputs"]["detections"], frame.objects)[0] >= 1

    # ?wait=true returns the result itself
    frame = cam.frame(6)
    r = gw.post(
        f"/v1/frames/{MODEL}",
        content=codec.encode_jpeg(frame.image),
        params={"wait": "true", "timeout": 30, "camera_id": "gwcam", "seq": 6},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["seq"] == 6
    assert r.json()["correlation_id"] == r.headers["X-Request-ID"]

    # an id nobody submitted is 404, not "pending"
    assert_error(gw.get("/v1/jobs/0123456789abcdef0123456789abcdef"), 404, "unknown_job")

    # /capabilities: served right now, from the worker's heartbeat, with the manifest
    caps = gw.get("/capabilities").json()
    assert caps["served_models"] == [MODEL]
    models = {m["model_id"]: m for m in caps["models"]}
    assert models[MODEL]["served"] and models[MODEL]["state"] == "ready"
    assert [w["worker"] for w in models[MODEL]["workers"]] == ["gw@test"]
    assert models[MODEL]["labels"] and models[MODEL]["input_size"]
    assert not models["resnet18"]["served"] and models["resnet18"]["state"] == "absent"

    health = gw.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.json()["models_ready"] == 1 and health.json()["workers_up"] == 1
    verbose = gw.get("/health", params={"verbose": "true"}).json()
    (model,) = verbose["models"]
    assert model["model_id"] == MODEL and model["state"] == "ready"
    assert verbose["queues"] == {MODEL: 0}

    after = families(gw.get("/metrics").text)
    for family in ("frame_size_bytes", "frame_decode_duration_seconds"):
        moved = sample(after, family, f"{family}_count") - sample(before, family, f"{family}_count")
        assert moved == 4 + CONCURRENT, family
    assert sample(after, "frame_size_bytes", "frame_size_bytes_sum") > 4 * 10_000
    requests = "gateway_requests_total"
    assert (
        sample(after, "gateway_requests", requests, route="/inference", status="200")
        == 2 + CONCURRENT
    )
    assert sample(after, "gateway_requests", requests, route="/v1/frames/{model_id}") == 2
    assert (
        sample(after, "gateway_frames_enqueued", "gateway_frames_enqueued_total") == 4 + CONCURRENT
    )


def test_bad_inputs_get_clear_errors(start_gateway) -> None:
    gw = start_gateway(MAX_FRAME_BYTES=str(MAX_FRAME_BYTES), MAX_QUEUE_DEPTH="1")
    jpeg = codec.encode_jpeg(SyntheticCamera("bad", 320, 240, seed=4).frame(0).image)
    raw = f"/v1/frames/{MODEL}"

    def inference(**fields: Any) -> httpx.Response:
        return gw.post("/inference", json={"model_id": MODEL, **fields})

    # not an image: 415 on both routes
    assert_error(gw.post(raw, content=b"hello, not an image"), 415, "unsupported_media_type")
    assert_error(inference(frame_base64=b64(b"GIF89a....")), 415, "unsupported_media_type")
    # a JPEG whose header is broken: 400
    assert_error(gw.post(raw, content=b"\xff\xd8\xff\xe0" + bytes(64)), 400, "bad_frame")
    # decompression bomb: refused from its header, before any decoding
    bomb = png_bomb()
    assert len(bomb) < MAX_FRAME_BYTES
    body = assert_error(gw.post(raw, content=bomb), 413, "too_many_pixels")
    assert "20000x20000" in body["message"]
    assert_error(inference(frame_base64=b64(bomb)), 413, "too_many_pixels")
    # over MAX_FRAME_BYTES: by Content-Length, and while reading a chunked body
    big = jpeg + bytes(MAX_FRAME_BYTES)
    assert_error(gw.post(raw, content=big), 413, "frame_too_large")
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    assert_error(gw.post(raw, content=chunks), 413, "frame_too_large")
    assert_error(
        inference(frame_base64=b64(big[: MAX_FRAME_BYTES + 40_000])), 413, "frame_too_large"
    )
    assert_error(inference(frame_base64="A" * 400_000), 413, "body_too_large")
    # invalid base64, invalid JSON, missing fields, bad ids
    assert_error(inference(frame_base64="@@@ not base64 @@@"), 400, "invalid_base64")
    r = gw.post("/inference", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")
    body = assert_error(gw.post("/inference", json={"model_id": MODEL}), 422, "invalid_request")
    assert "frame_base64" in body["message"]
    r = gw.post(raw, content=jpeg, headers={"X-Request-ID": "has spaces in it"})
    assert_error(r, 400, "invalid_request_id")
    assert_error(gw.post(raw, content=jpeg, params={"seq": -1}), 422, "invalid_request")
    # unknown model: 404 with the known ones
    body = assert_error(gw.post("/v1/frames/nope", content=jpeg), 404, "unknown_model")
    assert MODEL in body["known"]
    assert_error(
        gw.post("/inference", json={"model_id": "nope", "frame_base64": b64(jpeg)}),
        404,
        "unknown_model",
    )
    # no worker for resnet18: the wait times out (504, with the job to poll) ...
    r = gw.post(
        "/inference",
        params={"timeout": 0.5},
        json={"model_id": "resnet18", "frame_base64": b64(jpeg)},
    )
    body = assert_error(r, 504, "result_timeout")
    pending = gw.get(f"/v1/jobs/{body['job_id']}").json()
    assert pending["status"] == "pending" and pending["model_id"] == "resnet18"
    # ... and with MAX_QUEUE_DEPTH=1 that frame fills the queue: 429 with Retry-After
    r = gw.post("/v1/frames/resnet18", content=jpeg)
    body = assert_error(r, 429, "queue_full")
    assert int(r.headers["Retry-After"]) >= 1 and body["limit"] == 1
    assert_error(gw.get("/no/such/path"), 404, "not_found")

    fams = families(gw.get("/metrics").text)
    total = "gateway_requests_total"
    route = "/v1/frames/{model_id}"
    for status in ("415", "413", "400", "404", "429"):
        assert sample(fams, "gateway_requests", total, route=route, status=status) >= 1, status
    assert sample(fams, "gateway_requests", total, route="/inference", status="504") == 1
    # sizes are counted for what was read; the decode time for what was probed
    assert sample(fams, "frame_size_bytes", "frame_size_bytes_count") >= 8
    assert sample(fams, "frame_decode_duration_seconds", "frame_decode_duration_seconds_count") >= 8


def test_redis_down_is_503(start_gateway) -> None:
    gw = start_gateway(redis=f"redis://127.0.0.1:{free_port()}/0")
    jpeg = codec.encode_jpeg(SyntheticCamera("down", 320, 240, seed=5).frame(0).image)
    assert_error(gw.post(f"/v1/frames/{MODEL}", content=jpeg), 503, "redis_unavailable")
    r = gw.post("/inference", json={"model_id": MODEL, "frame_base64": b64(jpeg)})
    assert_error(r, 503, "redis_unavailable")
    assert int(r.headers["Retry-After"]) >= 1
    assert_error(gw.get("/v1/jobs/0123456789abcdef"), 503, "redis_unavailable")
    assert_error(gw.get("/capabilities"), 503, "redis_unavailable")
    health = gw.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert gw.get("/metrics").status_code == 200


def test_api_token_guards_the_frame_routes(start_gateway) -> None:
    gw = start_gateway(API_TOKEN=TOKEN)
    jpeg = codec.encode_jpeg(SyntheticCamera("tok", 320, 240, seed=6).frame(0).image)
    r = gw.post(f"/v1/frames/{MODEL}", content=jpeg)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_error(gw.post("/inference", json={"model_id": MODEL}), 401, "unauthorized")
    assert_error(gw.get("/v1/jobs/abc"), 401, "unauthorized")
    wrong = {"Authorization": "Bearer wrong"}
    assert_error(gw.get("/v1/jobs/abc", headers=wrong), 401, "unauthorized")
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert_error(gw.get("/v1/jobs/abc", headers=right), 404, "unknown_job")
    assert_error(gw.get("/v1/jobs/abc", params={"token": TOKEN}), 404, "unknown_job")
    r = gw.post(f"/v1/frames/{MODEL}", content=jpeg, headers=right)
    assert r.status_code == 202, r.text
    for open_path in ("/health", "/metrics", "/capabilities"):
        assert gw.get(open_path).status_code == 200, open_path


def _get_on(sock: socket.socket, path: str) -> bytes:
    """One GET on an open connection, its whole answer read; the status line."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the gateway closed the connection; got {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the gateway closed the connection mid-answer"
        body += chunk
    return head.split(b"\r\n", 1)[0]


def test_an_idle_connection_outlives_a_clients_keep_alive(start_gateway) -> None:
    """httpx drops a pooled connection after 5 s idle, uvicorn's default closes it at
    5 s: the gateway must keep it longer, or a client reusing it just then loses its
    request (docs/gateway.md, "Connections")."""
    gw = start_gateway()
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        assert _get_on(sock, "/capabilities").startswith(b"HTTP/1.1 200")
        time.sleep(httpx.Limits().keepalive_expiry + 1.5)  # type: ignore[operator]
        readable, _, _ = select.select([sock], [], [], 0)
        assert not readable, "the gateway closed the idle connection (or sent something)"
        assert _get_on(sock, "/capabilities").startswith(b"HTTP/1.1 200")
