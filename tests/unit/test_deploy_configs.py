"""deploy/: Prometheus config and rules, Grafana dashboard and provisioning.

Every metric a rule or a panel queries must be one the monitor's collector exports;
``promtool`` (when installed) checks the rules' syntax and fires them on test series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.contract import REFERENCE_METRICS

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

#: What monitoring/collector.py exports (contract: the fifteen reference names plus framepool's).
COLLECTOR_METRICS = {
    *REFERENCE_METRICS,
    "framepool_queue_depth",
    "framepool_queue_oldest_age_seconds",
    "framepool_frames_dropped_total",
    "framepool_batch_size",
    "framepool_batch_wait_seconds",
    "framepool_stage_duration_seconds",
    "framepool_worker_up",
    "framepool_alert_active",
    "framepool_gpu_power_watts",
    "celery_queue_length",
}
HISTOGRAMS = {
    "inference_duration_seconds",
    "frame_decode_duration_seconds",
    "frame_size_bytes",
    "framepool_batch_size",
    "framepool_batch_wait_seconds",
    "framepool_stage_duration_seconds",
}
KNOWN = COLLECTOR_METRICS | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, durations or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        if not m.group(2) and m.group(1) not in PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (model_id, le) (rate(x_bucket{status="a b"}[5m])))'
        " / on(model_id) y > bool 0.5 or vector(0)"
    )
    assert metric_names(expr) == {"x_bucket", "y"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_prometheus_config_scrapes_the_monitor_and_loads_the_rules() -> None:
    cfg = load_yaml(PROMETHEUS / "prometheus.yml")
    assert cfg["global"]["scrape_interval"] == "15s"
    [job] = cfg["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["monitor:8080"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert all((PROMETHEUS / f).is_file() for f in cfg["rule_files"])


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(PROMETHEUS / "alerts.yml")
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_alert_rules_match_the_monitor_rules() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) == {
        "GpuUtilizationHigh",
        "GpuMemoryHigh",
        "GpuTemperatureHigh",
        "QueueFramesTooOld",
        "QueueGrowing",
        "WorkerGone",
        "ModelUnhealthy",
        "ModelDegraded",
    }
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule
    assert rules["GpuUtilizationHigh"]["for"] == "30s"
    assert rules["GpuMemoryHigh"]["labels"]["severity"] == "critical"
    assert rules["WorkerGone"]["labels"]["severity"] == "critical"
    assert rules["ModelUnhealthy"]["expr"].replace(" ", "") == "model_health_status==-1"


def test_every_metric_in_the_rules_is_exported() -> None:
    used = set().union(*(metric_names(r["expr"]) for r in alert_rules()))
    assert used and used <= KNOWN, used - KNOWN


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / "framepool-dashboard.json").read_text("utf-8"))
    return doc


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


def test_dashboard_parses_with_unique_panel_ids_and_known_metrics() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"]
    panels = all_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= KNOWN, used - KNOWN
    for needed in (
        "gpu_utilization_percent",
        "gpu_memory_used_bytes",
        "gpu_temperature_celsius",
        "inference_requests_total",
        "inference_duration_seconds_bucket",
        "framepool_queue_depth",
        "framepool_queue_oldest_age_seconds",
        "framepool_frames_dropped_total",
        "framepool_worker_up",
        "framepool_alert_active",
    ):
        assert needed in used, needed
    assert any("histogram_quantile(0.99" in e for e in exprs)
    assert any("histogram_quantile(0.5" in e for e in exprs)
    var_names = {v["name"] for v in dash["templating"]["list"]}
    for p in panels:
        if p["type"] == "row":
            continue
        uid = p["datasource"]["uid"]
        assert uid == "prometheus" or uid.strip("${}") in var_names


def test_grafana_provisioning_points_at_the_datasource_and_dashboards() -> None:
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"].startswith("http://")
    boards = load_yaml(GRAFANA / "provisioning" / "dashboards" / "framepool.yml")
    [provider] = boards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    ds_var = next(v for v in dashboard()["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["query"] == "prometheus"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


@needs_promtool
def test_promtool_checks_the_rules_and_the_config() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _fires(at: str, name: str, labels: dict[str, str], summary: str, desc: str) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": desc}}
        ],
    }


@needs_promtool
def test_promtool_fires_the_rules_on_test_series(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    gpu = {"device": "0", "instance": "monitor:8080"}
    series = {
        "gpu_utilization_percent": (gpu, "95x10"),
        "gpu_temperature_celsius": (gpu, "60x10"),
        "gpu_memory_used_bytes": (gpu, "96x10"),
        "gpu_memory_total_bytes": (gpu, "100x10"),
        "framepool_queue_depth": ({"model_id": "m"}, "0+6x10"),
        "framepool_queue_oldest_age_seconds": ({"model_id": "m"}, "1 2 30x8"),
        "framepool_worker_up": ({"worker": "w"}, "1 1 0x8"),
        "model_health_status": ({"model_id": "m", "version": "1"}, "1 0 0 -1x7"),
    }
    input_series = [
        {
            "series": name + "{" + ",".join(f'{k}="{v}"' for k, v in lab.items()) + "}",
            "values": vals,
        }
        for name, (lab, vals) in series.items()
    ]
    gpu_on = "GPU 0 (monitor:8080)"
    tests = [
        {"eval_time": "15s", "alertname": "GpuUtilizationHigh", "exp_alerts": []},
        _fires("1m", "GpuUtilizationHigh", {**gpu, "severity": "warning", "metric": "gpu_utilization"},
               "GPU utilization above 90% for 30 seconds", f"{gpu_on} is at 95.0% utilization."),
        {"eval_time": "1m", "alertname": "GpuTemperatureHigh", "exp_alerts": []},
        _fires("1m", "GpuMemoryHigh", {**gpu, "severity": "critical", "metric": "memory_usage"},
               "GPU memory usage above 95%", f"{gpu_on} uses 96.0% of its memory."),
        {"eval_time": "1m", "alertname": "QueueFramesTooOld", "exp_alerts": []},
        _fires("3m", "QueueFramesTooOld", {"model_id": "m", "severity": "warning",
               "metric": "queue_oldest_age"}, "Oldest queued frame older than 10 seconds",
               "The oldest frame queued for m has waited 30s."),
        _fires("5m", "QueueGrowing", {"model_id": "m", "severity": "warning", "metric": "queue_depth"},
               "Queue growing for 60 seconds", "The queue of m has kept growing (0.10 frames/s)."),
        {"eval_time": "1m", "alertname": "WorkerGone", "exp_alerts": []},
        _fires("3m", "WorkerGone", {"worker": "w", "severity": "critical", "metric": "worker_heartbeat"},
               "Worker heartbeat missing", "Worker w stopped sending heartbeats."),
        {"eval_time": "0m", "alertname": "ModelDegraded", "exp_alerts": []},
        {"eval_time": "2m", "alertname": "ModelUnhealthy", "exp_alerts": []},
        _fires("4m", "ModelUnhealthy", {"model_id": "m", "version": "1", "severity": "critical",
               "metric": "model_health"}, "Model is unhealthy",
               "Model m 1 is unhealthy (error rate above MODEL_UNHEALTHY_ERROR_RATE)."),
    ]  # fmt: skip
    spec = {
        "rule_files": [str(PROMETHEUS / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": tests}],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(spec), encoding="utf-8")
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
