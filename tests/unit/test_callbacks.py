"""Webhook signing, backoff, URL masking, the dispatcher and the dead-letter list (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import httpx
import pytest
from structlog.testing import capture_logs

from framepool import deadletters, keys
from framepool.deadletters import is_http_url, mask_url
from framepool.settings import Settings
from workers.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackDispatcher,
    Outcome,
    Poster,
    backoff_delay,
    encode_body,
    sign,
)
from workers.results import FrameRecord

SECRET = "s3cret-key"
RESULT = {
    "job_id": "job-1",
    "correlation_id": "cid-1",
    "model_id": "shape_detector",
    "camera_id": "cam1",
    "status": "ok",
    "outputs": {"detections": [{"label": "circle", "score": 0.9, "box": [1, 2, 3, 4]}]},
}


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0", **kw)


def verify(secret: str, headers: Any, body: bytes) -> bool:
    """What docs/callbacks.md tells a receiver to do."""
    ts = headers["X-Framepool-Timestamp"]
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Framepool-Signature"], f"sha256={mac}")


# ------------------------------------------------------------------- signing
def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = encode_body(RESULT)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"sha256={expected}"
    # the timestamp is signed: replaying the body with a fresh timestamp does not verify
    assert sign(SECRET, 1700000001, body) != sign(SECRET, 1700000000, body)
    assert sign("other", 1700000000, body) != sign(SECRET, 1700000000, body)
    assert sign(SECRET, 1700000000, body + b" ") != sign(SECRET, 1700000000, body)


def test_poster_signs_the_exact_body_it_sends() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    poster = Poster(
        settings(callback_secret=SECRET),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        clock=lambda: 1700000000.7,
    )
    outcome = poster.post("https://hooks.example/r?token=abc", RESULT, attempt=3)
    assert outcome.delivered and outcome.reason == "HTTP 204"
    req = seen[0]
    assert json.loads(req.content) == RESULT
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Correlation-ID"] == "cid-1"
    assert req.headers["X-Framepool-Job-ID"] == "job-1"
    assert req.headers[TIMESTAMP_HEADER] == "1700000000"
    assert req.headers["X-Framepool-Attempt"] == "3"
    assert verify(SECRET, req.headers, req.content)
    assert not verify("wrong", req.headers, req.content)


def test_without_a_secret_no_signature_header_and_one_warning() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200))
    with capture_logs() as logs:
        poster = Poster(settings(), http=httpx.Client(transport=transport))
        assert poster.post("http://127.0.0.1:9/x", RESULT, 1).delivered
        assert poster.post("http://127.0.0.1:9/x", RESULT, 1).delivered
    assert SIGNATURE_HEADER not in seen[0].headers and TIMESTAMP_HEADER in seen[0].headers
    assert [e["event"] for e in logs] == ["callback_secret_missing"]


def test_non_2xx_and_connection_errors_are_failures_without_url_secrets() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError(f"cannot reach {request.url}", request=request)
        return httpx.Response(int(request.url.path.strip("/")))

    poster = Poster(
        settings(callback_secret=SECRET), http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    assert poster.post("http://h.example/500", RESULT, 1) == Outcome(False, "HTTP 500")
    assert poster.post("http://h.example/302", RESULT, 1).reason == "HTTP 302"  # not followed
    assert not poster.post("http://h.example/404", RESULT, 1).delivered
    down = poster.post("http://u:pw@h.example/down?sig=topsecret", RESULT, 1)
    assert not down.delivered and down.reason.startswith("ConnectError: cannot reach")
    assert "topsecret" not in down.reason and "pw" not in down.reason


# ------------------------------------------------------------------- backoff
def test_backoff_doubles_per_retry_with_equal_jitter_and_a_cap() -> None:
    assert [backoff_delay(r, 1.0, rand=lambda: 1.0) for r in range(5)] == [1, 2, 4, 8, 16]
    assert [backoff_delay(r, 1.0, rand=lambda: 0.0) for r in range(5)] == [0.5, 1, 2, 4, 8]
    assert backoff_delay(30, 1.0, cap=300.0, rand=lambda: 1.0) == 300.0
    assert backoff_delay(10_000, 0.5, rand=lambda: 1.0) == 300.0  # no overflow
    delays = {backoff_delay(3, 0.05) for _ in range(50)}
    assert len(delays) > 1 and all(0.2 <= d <= 0.4 for d in delays)


# ------------------------------------------------------------------- URLs
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://hooks.example/results", "https://hooks.example/results"),
        ("https://user:pw@hooks.example:8443/r", "https://***@hooks.example:8443/r"),
        ("http://h.example/r?token=abc&cam=1", "http://h.example/r?token=***&cam=***"),
        (
            "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXX1234",
            "https://hooks.slack.com/services/T0001/B0001/***",
        ),
        ("http://[::1]:8080/cb#frag", "http://[::1]:8080/cb"),
        ("http://h.example:notaport/", "<invalid url>"),
    ],
)
def test_mask_url_hides_credentials_query_values_and_path_tokens(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_only_absolute_http_urls_are_callback_urls() -> None:
    assert is_http_url("http://127.0.0.1:8000/x") and is_http_url("https://h.example")
    for bad in ("ftp://h.example/x", "file:///etc/passwd", "http://", "h.example/x", None, 3):
        assert not is_http_url(bad)


# ------------------------------------------------------------------- dispatcher
class FakeProducer:
    def __init__(self) -> None:
        self.batches = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.batches += 1
        yield


class FakeApp:
    def __init__(self, fail: bool = False) -> None:
        self.producer = FakeProducer()
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    @contextmanager
    def producer_or_acquire(self) -> Iterator[FakeProducer]:
        yield self.producer

    def send_task(self, name: str, **kw: Any) -> None:
        if self.fail:
            raise ConnectionError("redis away")
        self.sent.append((name, kw))


def record(job: str, url: str | None) -> tuple[FrameRecord, dict[str, Any]]:
    meta: Any = {"model_id": "m", "enqueued_at": 0.0, "callback_url": url}
    return FrameRecord(job, f"cid-{job}", meta), {
        **RESULT,
        "job_id": job,
        "correlation_id": f"cid-{job}",
    }


def test_dispatcher_sends_one_task_per_callback_in_one_batch_to_the_callbacks_queue() -> None:
    app = FakeApp()
    dispatcher = CallbackDispatcher(settings(), app=app)  # type: ignore[arg-type]
    dispatcher.dispatch([record("a", "http://h/1"), record("b", None), record("c", "http://h/2")])
    assert app.producer.batches == 1
    assert [(name, kw["queue"], kw["args"][0]) for name, kw in app.sent] == [
        (keys.CALLBACK_TASK, keys.CALLBACK_QUEUE, "http://h/1"),
        (keys.CALLBACK_TASK, keys.CALLBACK_QUEUE, "http://h/2"),
    ]
    assert app.sent[0][1]["args"][1]["job_id"] == "a"
    assert app.sent[0][1]["headers"] == {"correlation_id": "cid-a"}


def test_dispatcher_costs_nothing_without_callback_urls() -> None:
    dispatcher = CallbackDispatcher(settings())
    dispatcher.dispatch([record("a", None), record("b", "")])
    assert dispatcher._app is None  # no Celery app was even built


def test_dispatcher_logs_a_failed_publish_and_never_raises() -> None:
    dispatcher = CallbackDispatcher(settings(), app=FakeApp(fail=True))  # type: ignore[arg-type]
    with capture_logs() as logs:
        dispatcher.dispatch([record("a", "http://h/1")])
    assert logs[0]["event"] == "callback_enqueue_failed" and logs[0]["job_ids"] == ["a"]


# ------------------------------------------------------------------- dead-letter list
def entry(kind: str, job: str, url: str | None = None) -> dict[str, Any]:
    return deadletters.make_entry(
        kind,
        "HTTP 500",
        job_id=job,
        correlation_id=f"cid-{job}",
        model_id="shape_detector",
        camera_id="cam1",
        attempts=3,
        url=url,
        payload={"url": url, "result": {"job_id": job}} if url else None,
    )


def test_dead_letters_are_capped_counted_filtered_and_listed_without_payload() -> None:
    client = fakeredis.FakeRedis()
    with client.pipeline() as pipe:
        for i in range(5):
            deadletters.add(pipe, entry("callback", f"j{i}", "http://u:pw@h/x?k=v"), maxlen=4)
        deadletters.add(pipe, entry("frame", "f0"), maxlen=4)
        pipe.execute()
    client.lpush(keys.DEAD_LETTERS, b"not json")
    assert deadletters.total(client) == 5  # capped at 4, then one junk line
    dropped = client.hgetall(keys.dropped_counter("shape_detector"))
    assert dropped == {b"callback_dead_lettered": b"5", b"frame_dead_lettered": b"1"}
    callbacks = deadletters.read(client, kind="callback", limit=10)
    assert [d.entry["job_id"] for d in callbacks] == ["j4", "j3", "j2"]  # newest first
    assert [d.entry["job_id"] for d in deadletters.read(client, limit=2)] == ["f0", "j4"]
    shown = deadletters.public(callbacks[0].entry)
    assert "payload" not in shown and shown["url"] == "http://***@h/x?k=***"
    assert callbacks[0].entry["payload"]["url"] == "http://u:pw@h/x?k=v"  # kept for a requeue


def test_unknown_dead_letter_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dead-letter kind"):
        entry("email", "j")


def test_requeue_sends_callbacks_again_and_leaves_other_kinds() -> None:
    client = fakeredis.FakeRedis()
    with client.pipeline() as pipe:
        deadletters.add(pipe, entry("callback", "j1", "http://h/1"), maxlen=100)
        deadletters.add(pipe, entry("frame", "f1"), maxlen=100)
        deadletters.add(pipe, entry("callback", "j2", "http://h/2"), maxlen=100)
        pipe.execute()
    app = FakeApp()
    report = deadletters.requeue(client, app, limit=10)  # type: ignore[arg-type]
    assert report.requeued == 2 and report.skipped == {"frame": 1}
    assert [kw["args"] for _, kw in app.sent] == [
        ("http://h/2", {"job_id": "j2"}),
        ("http://h/1", {"job_id": "j1"}),
    ]
    assert [d.entry["kind"] for d in deadletters.read(client)] == ["frame"]
    assert "left in place" in deadletters.describe({"requeued": 2, "skipped": {"frame": 1}})


def test_the_callbacks_worker_module_does_not_import_torch() -> None:
    code = "import sys, workers.callbacks, framepool.deadletters; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------- the delivery task
def run_task(statuses: list[int], url: str = "http://h.example/x", **kw: Any) -> tuple:
    """Run framepool.deliver_callback eagerly (Celery's apply runs retries inline)."""
    from celery import Celery

    from workers.callbacks import register_callback_task

    s = settings(callback_secret=SECRET, callback_backoff_seconds=0.001, **kw)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(statuses[min(len(seen), len(statuses)) - 1])

    client = fakeredis.FakeRedis()
    poster = Poster(s, http=httpx.Client(transport=httpx.MockTransport(handler)))
    task = register_callback_task(Celery(set_as_current=False), s, client, poster)
    task.apply(args=(url, RESULT))
    counts = {k.decode(): int(v) for k, v in client.hgetall(keys.CALLBACK_STATS).items()}
    return seen, counts, deadletters.read(client)


def test_task_retries_until_a_2xx() -> None:
    seen, counts, letters = run_task([503, 500, 200], callback_max_retries=5)
    assert [r.headers["X-Framepool-Attempt"] for r in seen] == ["1", "2", "3"]
    assert counts == {"failed": 2, "retried": 2, "delivered": 1} and letters == []


def test_task_dead_letters_after_the_last_retry() -> None:
    seen, counts, letters = run_task([500], url="http://h.example/x?k=v", callback_max_retries=2)
    assert len(seen) == 3 and counts == {"failed": 3, "retried": 2, "dead_lettered": 1}
    [letter] = letters
    e = letter.entry
    assert (e["kind"], e["reason"], e["attempts"], e["job_id"]) == (
        "callback",
        "HTTP 500",
        3,
        "job-1",
    )
    assert e["url"] == "http://h.example/x?k=***" and e["payload"]["result"] == RESULT


def test_task_makes_every_attempt_the_default_allows_then_dead_letters() -> None:
    """Past Celery's own default of 3 retries (the task's ``max_retries``): the setting
    is what counts, and the last failure is dead-lettered, not raised."""
    default = Settings().callback_max_retries
    assert default > 3
    seen, counts, letters = run_task([500])
    assert len(seen) == default + 1
    assert counts == {"failed": default + 1, "retried": default, "dead_lettered": 1}
    assert letters[0].entry["attempts"] == default + 1


def test_task_refuses_a_non_http_url_without_sending() -> None:
    seen, counts, letters = run_task([200], url="file:///etc/passwd")
    assert seen == [] and counts == {"dead_lettered": 1}
    assert letters[0].entry["reason"] == "refused: not an http(s) URL"
    assert letters[0].entry["attempts"] == 0
