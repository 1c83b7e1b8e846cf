"""Settings names and parsing; structured logging, redaction, context binding."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from framepool.log import LogTimer, bind_frame, configure_logging, get_logger
from framepool.settings import Settings


def test_reference_and_framepool_names_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "SERVER_PORT": "9001",
        "LOG_FORMAT": "text",
        "ENABLE_GPU": "false",
        "GPU_MEMORY_RESERVE_MB": "1024",
        "REDACT_LOG_FIELDS": "secret, api_key",
        "MODEL_LOAD_TIMEOUT_MS": "1234",
        "REDIS_URL": "redis://:pw@10.0.0.5:6380/2",
        "MAX_BATCH_SIZE": "32",
        "BATCH_TIMEOUT_MS": "2.5",
        "MAX_QUEUE_DEPTH": "50",
        "RESULT_TTL_SECONDS": "60",
        "log_level": "debug",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings(_env_file=None)
    assert s.server_port == 9001
    assert s.log_format == "console"  # the reference's "text"
    assert s.enable_gpu is False and s.gpu_memory_reserve_mb == 1024
    assert s.redact_log_fields == ["secret", "api_key"]
    assert s.model_load_timeout_ms == 1234
    assert s.redis_url.endswith(":6380/2")
    assert (s.max_batch_size, s.batch_timeout_s, s.max_queue_depth) == (32, 0.0025, 50)
    assert s.result_ttl_seconds == 60 and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_BATCH_SIZE", "0"),
        ("LOG_FORMAT", "xml"),
        ("SERVER_PORT", "70000"),
        ("QUEUE_FULL_POLICY", "maybe"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings(_env_file=None)


def _json_lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


@pytest.fixture()
def captured() -> io.StringIO:
    buf = io.StringIO()
    configure_logging(Settings(_env_file=None, log_level="DEBUG", log_format="json"), stream=buf)
    yield buf
    configure_logging(Settings(_env_file=None))


def test_json_lines_carry_bound_frame_context_and_redact(captured: io.StringIO) -> None:
    log = get_logger("t")
    with bind_frame(correlation_id="cid-1", camera_id="cam9", job_id="j1"):
        log.info("frame_done", api_key="s3cret", password="hunter2", batch_size=4)
    log.info("after")
    first, second = _json_lines(captured)
    assert first["event"] == "frame_done" and first["correlation_id"] == "cid-1"
    assert first["camera_id"] == "cam9" and first["job_id"] == "j1"
    assert first["api_key"] == "[redacted]" and first["password"] == "[redacted]"
    assert first["batch_size"] == 4 and first["level"] == "info" and "timestamp" in first
    assert "correlation_id" not in second  # unbound on leaving the block


def test_stdlib_loggers_share_the_format_and_context(captured: io.StringIO) -> None:
    with bind_frame(correlation_id="cid-2"):
        logging.getLogger("celery.something").warning("hello %s", "world")
    (line,) = _json_lines(captured)
    assert line["event"] == "hello world" and line["correlation_id"] == "cid-2"


def test_log_timer_reports_duration_and_failure(captured: io.StringIO) -> None:
    log = get_logger("t")
    with LogTimer(log, "model_load", model_id="m"):
        pass
    with pytest.raises(RuntimeError), LogTimer(log, "model_load", model_id="m"):
        raise RuntimeError("boom")
    ok, failed = _json_lines(captured)
    assert ok["event"] == "model_load_done" and ok["duration_ms"] >= 0 and ok["model_id"] == "m"
    assert failed["event"] == "model_load_failed" and "boom" in failed["error"]


def test_lines_below_the_level_are_dropped_before_any_processor() -> None:
    import structlog

    buf = io.StringIO()
    configure_logging(Settings(_env_file=None, log_level="INFO", log_format="json"), stream=buf)
    try:
        # the level check comes first: a dropped debug line costs no timestamp, no redaction
        assert structlog.get_config()["processors"][0] is structlog.stdlib.filter_by_level
        log = get_logger("t")
        log.debug("frame_done", batch_size=1)
        log.info("kept", batch_size=2)
        (line,) = _json_lines(buf)
        assert line["event"] == "kept"
    finally:
        configure_logging(Settings(_env_file=None))
