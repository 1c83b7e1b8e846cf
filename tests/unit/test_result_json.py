"""workers.results.result_json: a result as the camera streams and webhooks carry it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workers.results import result_json


def test_the_same_json_the_stdlib_reads_back() -> None:
    r = {
        "job_id": "j1",
        "status": "ok",
        "error": None,
        "outputs": {"classes": [{"label": "cat", "score": 0.25}], "box": (1, 2, 3, 4)},
        "timings_ms": {"total": 12.5},
        "seq": 17,
        "camera_id": "cam-é",
    }
    assert json.loads(result_json(r)) == {**r, "outputs": {**r["outputs"], "box": [1, 2, 3, 4]}}


def test_numpy_values_and_int_keys_are_written_as_json_has_them() -> None:
    r = {"outputs": {"score": np.float32(0.5), "n": np.int64(3), "mask": np.array([[1, 0]]),
                     "by_class": {7: "x"}}}  # fmt: skip
    assert json.loads(result_json(r)) == {
        "outputs": {"score": 0.5, "n": 3, "mask": [[1, 0]], "by_class": {"7": "x"}}
    }


def test_nan_becomes_null_so_a_browser_can_parse_it() -> None:
    text = result_json({"score": math.nan, "worst": -math.inf}).decode()
    assert text == '{"score":null,"worst":null}'


def test_what_json_cannot_hold_is_refused_with_its_type() -> None:
    with pytest.raises(TypeError, match="object"):
        result_json({"outputs": object()})
