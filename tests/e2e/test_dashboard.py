"""The dashboard in a real browser against a real ``framepool monitor`` process.

Fake heartbeats (a GPU worker with NVML readings and CUDA kernels, a CPU
worker) and a few queued frames are written to a real Redis and refreshed in a
background thread, as live workers would (``tests/e2e/fake_cluster.py``); the
monitor runs as a subprocess; headless Chromium (Debian's ``chromium``) driven by Playwright opens the page
with ``?token=`` and checks what a user would see. A full-page screenshot is
left in ``tests/artifacts/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framepool.redis_server import free_port
from framepool.settings import Settings
from tests.e2e.fake_cluster import (
    ALL_KERNELS,
    BY_CALLS,
    BY_TOTAL_TIME,
    CPU_WORKER,
    GPU_WORKER,
    HEARTBEAT_INTERVAL_S,
    FakeCluster,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "dashboard-test-token"
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install playwright)"
)


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root."""
    found = shutil.which("chromium")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("chromium not installed and not root: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {exc}")
        if out.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {out.stderr[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


@pytest.fixture()
def cluster(redis_url: str) -> Iterator[FakeCluster]:
    fake = FakeCluster(redis_url).start()
    yield fake
    fake.stop()


# ------------------------------------------------------------- the monitor


@pytest.fixture()
def monitor(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``framepool monitor`` as a child process; yields its base URL once /health answers."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "MONITOR_PORT": str(port),
        "SERVER_HOST": "127.0.0.1",
        "API_TOKEN": TOKEN,
        "HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_INTERVAL_S),
        "DATA_DIR": str(settings.data_dir),
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "monitor.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "framepool.cli", "monitor"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"monitor exited with {proc.returncode}:\n{tail()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (an unhealthy cluster is still an answer)
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"monitor did not answer /health in 60 s:\n{tail()}")
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ------------------------------------------------------------------ the test


def _dashboard(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => window.framepoolDashboard && window.framepoolDashboard.{expr}")


def _kernel_names(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#kernels tbody td.kernel-name").all_inner_texts()]


def _kernel_calls(page: Any) -> list[int]:
    texts = page.locator("#kernels tbody tr td:nth-child(3)").all_inner_texts()
    return [int(t.replace(",", "").strip()) for t in texts]


@pytest.mark.timeout(300)
def test_dashboard_shows_the_live_cluster(
    chromium: str, cluster: FakeCluster, monitor: str
) -> None:
    sync_playwright = playwright_api.sync_playwright
    problems: list[str] = []
    outside: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="en-US")
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url)
                    if not r.url.startswith((monitor, monitor.replace("http", "ws", 1), "data:"))
                    else None
                ),
            )
            page.goto(f"{monitor}/?token={TOKEN}")

            # the stream flows and the charts fill
            page.wait_for_function(
                "() => (window.framepoolDashboard?.messages ?? 0) >= 3", timeout=30_000
            )
            page.wait_for_function(
                "() => window.framepoolDashboard.charts.gpu_utilization > 0", timeout=15_000
            )
            assert _dashboard(page, "charts.gpu_memory") > 0
            assert _dashboard(page, "charts.throughput") > 0
            assert _dashboard(page, "lastMessage.type") == "gpu_metrics"
            assert _dashboard(page, "lastMessage.gpu_available") is True
            assert page.locator("#no-gpu").is_hidden()
            assert "Live" in page.locator("#conn").inner_text()

            # workers table
            page.wait_for_function(
                "names => names.every(n => document.querySelector('#workers tbody')"
                ".textContent.includes(n))",
                arg=[GPU_WORKER, CPU_WORKER],
                timeout=10_000,
            )
            assert "node-a" in page.locator("#workers tbody").inner_text()

            # kernel table: every kernel, most total time first, then sorted by calls
            page.wait_for_function(
                "n => document.querySelectorAll('#kernels tbody td.kernel-name').length >= n",
                arg=len(ALL_KERNELS),
                timeout=10_000,
            )
            assert _kernel_names(page) == BY_TOTAL_TIME
            page.get_by_role("button", name="Calls").click()
            assert page.locator("#kernels th[data-key=total_calls]").get_attribute("aria-sort") == (
                "descending"
            )
            assert _kernel_names(page) == BY_CALLS
            calls = _kernel_calls(page)
            assert calls == sorted(calls, reverse=True) and calls[0] == 480
            page.wait_for_timeout(1500)  # a new message keeps the user's sort
            assert _kernel_names(page) == BY_CALLS
            page.get_by_role("button", name="Calls").click()
            assert _kernel_calls(page) == sorted(calls)
            page.get_by_label("Filter by name").fill("conv")
            assert _kernel_names(page) == ["aten::conv2d"]
            page.get_by_label("Filter by name").fill("")

            # an alert fires in the monitor and shows up in the list, in red
            cluster.gpu_memory_percent = 99.0
            critical = page.locator("#alerts li[data-severity=critical]")
            critical.first.wait_for(timeout=20_000)
            text = critical.first.inner_text()
            assert "node-a" in text and "memory" in text.lower()
            assert int(page.locator("#sum-alerts").inner_text()) >= 1

            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert not cluster.errors, cluster.errors
        finally:
            browser.close()

    assert not problems, problems
    assert not outside, f"requests outside the monitor: {outside}"
