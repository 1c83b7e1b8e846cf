"""workers.task.Glimpse: the line Flower shows as a frame task's result."""

from __future__ import annotations

from celery.utils.saferepr import saferepr

from workers.task import Glimpse, glimpse


def _result(**over: object) -> dict[str, object]:
    r: dict[str, object] = {
        "job_id": "4d7b55aeb65f4a639fd29cdbecc11155",
        "correlation_id": "req-42",
        "model_id": "shape_detector",
        "status": "ok",
        "error": None,
        "outputs": {"shapes": [{"kind": "circle"}] * 50},
        "timings_ms": {"total": 41.234, "inference": 20.0},
        "batch_size": 8,
    }
    r.update(over)
    return r


def test_an_ok_result_in_one_line() -> None:
    assert glimpse(_result()) == "ok model=shape_detector batch=8 total=41.2ms cid=req-42"


def test_an_error_names_its_type_and_message() -> None:
    r = _result(status="error", batch_size=1, error={"type": "BadFrame", "message": "not a JPEG"})
    assert glimpse(r) == (
        "error model=shape_detector batch=1 total=41.2ms cid=req-42 BadFrame: not a JPEG"
    )


def test_missing_fields_do_not_break_the_line() -> None:
    assert glimpse({"status": "expired"}) == "expired model=None batch=None total=? cid=None"


def test_celery_shows_the_line_as_the_result_and_the_result_stays_whole() -> None:
    r = _result()
    g = Glimpse(r)
    assert saferepr(g, 160) == glimpse(r)  # what the task-succeeded event carries
    assert g.result is r
