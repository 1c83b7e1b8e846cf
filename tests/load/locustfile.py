"""Locust load test for the framepool gateway (the reference document's user classes).

- ``InferenceUser``: one model through the reference API, ``POST /inference``
  with ``frame_base64`` (waits for the result);
- ``MultiModelUser``: the same traffic split across every model the gateway's
  ``/capabilities`` says is served right now.

At the end the run is checked against the reference's targets (p50 < 100 ms,
p99 < 500 ms, errors < 1 %); a missed target makes locust exit 1. A JSON
summary goes to ``--summary-json`` when given.

    locust -f tests/load/locustfile.py --host http://127.0.0.1:8000 \\
        --users 20 --spawn-rate 5 --run-time 300s --headless \\
        --model-id shape_detector [--api-token T] [--summary-json out.json]

(``make load`` runs it against a stack it starts itself.)
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from framepool import codec
from producer.sources.synthetic import SyntheticCamera

TARGETS = {"p50_ms": 100.0, "p99_ms": 500.0, "error_rate": 0.01}
_FRAMES = [
    base64.b64encode(codec.encode_jpeg(f.image)).decode()
    for f in SyntheticCamera("locust", 320, 240, seed=17).frames(16)
]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model-id", default="shape_detector", help="model for InferenceUser")
    parser.add_argument("--api-token", default="", help="the gateway's API_TOKEN, if set")
    parser.add_argument("--summary-json", default="", help="write the run's figures here")
    parser.add_argument(
        "--no-check-targets", action="store_true", help="report the targets, never fail on them"
    )


class _FrameUser(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        token = self.environment.parsed_options.api_token
        self.client.headers["Authorization"] = f"Bearer {token}" if token else ""
        self.models = [self.environment.parsed_options.model_id]

    def infer(self, model_id: str) -> None:
        cid = uuid.uuid4().hex
        body = {"model_id": model_id, "frame_base64": random.choice(_FRAMES), "camera_id": "lc"}
        with self.client.post(
            "/inference",
            json=body,
            headers={"X-Request-ID": cid},
            name=f"/inference [{model_id}]",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.json().get("status") != "ok":
                r.failure(f"result status {r.json().get('status')}")
            elif r.json().get("correlation_id") != cid:
                r.failure("wrong correlation id")
            else:
                r.success()


class InferenceUser(_FrameUser):
    weight = 3

    @task
    def single_model(self) -> None:
        self.infer(self.models[0])


class MultiModelUser(_FrameUser):
    weight = 1

    def on_start(self) -> None:
        super().on_start()
        r = self.client.get("/capabilities", name="/capabilities")
        served = r.json().get("served_models", []) if r.ok else []
        self.models = served or self.models

    @task
    def several_models(self) -> None:
        self.infer(random.choice(self.models))


@events.quitting.add_listener
def _check_targets(environment: Any, **_: Any) -> None:
    total = environment.stats.total
    figures = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "error_rate": total.fail_ratio,
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "rps": total.total_rps,
    }
    met = {
        "p50_ms": figures["p50_ms"] < TARGETS["p50_ms"],
        "p99_ms": figures["p99_ms"] < TARGETS["p99_ms"],
        "error_rate": figures["error_rate"] < TARGETS["error_rate"],
    }
    summary = {**figures, "targets": TARGETS, "met": met}
    print("framepool load targets:", json.dumps(summary))
    opts = environment.parsed_options
    if opts and opts.summary_json:
        Path(opts.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    if not all(met.values()) and not (opts and opts.no_check_targets):
        environment.process_exit_code = 1
