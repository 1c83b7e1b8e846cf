"""A real Prometheus server scrapes the monitor, and a query returns framepool series."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import redis

from framepool.redis_server import free_port
from tests.heartbeats import gpu_heartbeat, publish
from tests.integration.test_monitor import Monitor
from tests.system_packages import ensure_binary


def test_prometheus_scrapes_the_monitor(redis_url: str, tmp_path: Path) -> None:
    prometheus = ensure_binary("prometheus", "prometheus")
    publish(redis.Redis.from_url(redis_url), gpu_heartbeat("gpu0-1@promhost", host="promhost"))
    mon = Monitor(redis_url, tmp_path / "monitor.log")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: framepool\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{mon.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"
        deadline = time.monotonic() + 60
        result: list = []
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                body = httpx.get(api, params={"query": "gpu_utilization_percent"}, timeout=5).json()
            except httpx.HTTPError:
                continue
            result = body.get("data", {}).get("result", [])
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(result[0]["value"][1]) == 50.0
        assert "promhost" in str(result[0]["metric"])
        up = httpx.get(api, params={"query": 'up{job="framepool"}'}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        mon.stop()
