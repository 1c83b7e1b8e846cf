"""docker-compose.yml: valid for docker-compose, and everything it names is real.

The file is read twice: as ``docker-compose config`` renders it (interpolated
with test secrets; the Debian package is installed when missing) and as plain
YAML (anchors merged) for the checks against framepool's own code.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests import deploy_checks as checks
from tests.system_packages import ensure_binary

yaml = pytest.importorskip("yaml")

COMPOSE = checks.ROOT / "docker-compose.yml"
DOCKERFILE = checks.ROOT / "Dockerfile"
SECRETS = {
    "REDIS_PASSWORD": "test-redis-pw",
    "API_TOKEN": "test-token",
    "CALLBACK_SECRET": "test-callback-secret",
    "FLOWER_BASIC_AUTH": "admin:test-pw",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-pw",
}
WORKERS = {"worker-gpu0": "0", "worker-gpu1": "1"}


def raw() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc


def services() -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = raw()["services"]
    return svcs


def ours() -> dict[str, dict[str, Any]]:
    """The services that run the framepool image (built from the Dockerfile)."""
    return {n: s for n, s in services().items() if "build" in s}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def ports_of(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, container) pairs, from either the short or the long syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((int(p["published"]), int(p["target"])))
        else:
            published, target = str(p).rsplit("/", 1)[0].split(":")[-2:]
            out.append((int(published), int(target)))
    return out


def compose_binary() -> str:
    return ensure_binary("docker-compose", "docker-compose")


def render(
    binary: str, tmp_path: Path, secrets: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    done = render(compose_binary(), tmp_path, SECRETS)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)["services"]
    assert set(rendered) == set(services())
    pw = SECRETS["REDIS_PASSWORD"]
    for name in ours():
        assert rendered[name]["environment"]["REDIS_URL"] == f"redis://:{pw}@redis:6379/0", name
    assert rendered["redis"]["command"][-2:] == ["--requirepass", pw]
    assert rendered["monitor"]["environment"]["API_TOKEN"] == SECRETS["API_TOKEN"]
    assert rendered["callbacks"]["environment"]["CALLBACK_SECRET"] == SECRETS["CALLBACK_SECRET"]
    for name, gpu in WORKERS.items():
        [device] = rendered[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [gpu] and device["driver"] == "nvidia", name


@pytest.mark.parametrize("missing", ["REDIS_PASSWORD", "API_TOKEN", "CALLBACK_SECRET"])
def test_a_missing_secret_stops_compose_with_its_name(tmp_path: Path, missing: str) -> None:
    secrets = {k: v for k, v in SECRETS.items() if k != missing}
    done = render(compose_binary(), tmp_path, secrets)
    assert done.returncode != 0
    assert f"set {missing}" in done.stderr


def test_every_framepool_service_runs_a_real_subcommand_with_real_flags() -> None:
    commands = {}
    for name, svc in ours().items():
        assert "entrypoint" not in svc, f"{name}: the image's ENTRYPOINT is framepool"
        args = [str(a) for a in svc["command"]]
        # compose interpolation: ${X:-default} stands for its default here
        args = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in args]
        assert checks.cli_problems(args, name) == []
        commands[name] = args[0]
    assert commands == {
        "worker-gpu0": "worker",
        "worker-gpu1": "worker",
        "monitor": "monitor",
        "gateway": "gateway",
        "flower": "flower",
        "callbacks": "callbacks",
    }


def test_the_cli_check_catches_unknown_commands_and_flags() -> None:
    assert checks.cli_problems(["wroker"], "x")
    assert checks.cli_problems(["worker", "--device", "cuda:0", "--model", "noop"], "x")
    assert checks.cli_problems(["worker", "--device", "gpu0", "--models", "noop"], "x")
    assert checks.cli_problems(["monitor", "--port", "http"], "x")


def test_every_variable_on_a_framepool_service_is_a_setting() -> None:
    problems = []
    for name, svc in ours().items():
        problems += checks.env_problems(env_of(svc), name)
    assert problems == []
    assert checks.env_problems(["REDIS_URI"], "x")  # the check can fail


def test_the_image_sets_only_settings_and_known_variables() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    names = re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=", text, flags=re.M)
    assert {"SERVER_HOST", "LOG_FORMAT"} <= set(names)
    assert checks.env_problems(names, "Dockerfile") == []
    assert re.search(r'^ENTRYPOINT \["framepool"\]$', text, flags=re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", text, flags=re.M)
    pin = re.search(r"^TORCH\s*:=\s*(\S+)", (checks.ROOT / "Makefile").read_text(), flags=re.M)
    assert pin and f"ARG TORCH={pin.group(1)}" in text


def test_framepool_services_reach_redis_by_url_with_the_password() -> None:
    for name, svc in ours().items():
        env = env_of(svc)
        assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD"), name
        assert env["REDIS_URL"].endswith("@redis:6379/0"), name
        assert env["SERVER_HOST"] == "0.0.0.0", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert env_of(services()["monitor"])["API_TOKEN"].startswith("${API_TOKEN:?")
    assert env_of(services()["gateway"])["API_TOKEN"].startswith("${API_TOKEN:?")
    assert env_of(services()["flower"])["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert env_of(services()["callbacks"])["CALLBACK_SECRET"].startswith("${CALLBACK_SECRET:?")


def test_redis_is_durable_and_needs_a_password() -> None:
    redis = services()["redis"]
    cmd = [str(a) for a in redis["command"]]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in raw()["volumes"]
    assert "ports" not in redis  # reachable only from the compose network
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_each_worker_reserves_exactly_its_own_gpu() -> None:
    workers = {n: s for n, s in ours().items() if s["command"][0] == "worker"}
    assert set(workers) == set(WORKERS)
    for name, svc in workers.items():
        [device] = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device == {
            "driver": "nvidia",
            "device_ids": [WORKERS[name]],
            "capabilities": ["gpu"],
        }
        # the container sees its one GPU as device 0
        assert svc["command"][svc["command"].index("--device") + 1] == "cuda:0"
    others = [n for n, s in services().items() if n not in workers and "deploy" in s]
    assert others == []
    assert len({s["hostname"] for s in workers.values()}) == len(workers)  # distinct names


def test_ports_and_healthchecks_match_the_services() -> None:
    for name in ("monitor", "gateway", "flower"):
        port = checks.default_port(name)
        assert ports_of(services()[name]) == [(port, port)], name
    for name in ("monitor", "gateway"):
        test = " ".join(services()[name]["healthcheck"]["test"])
        m = re.search(r"http://127\.0\.0\.1:(\d+)(/[^'\"]*)", test)
        assert m, test
        assert checks.route_problems(name, m.group(2), int(m.group(1)), name) == []
    assert checks.route_problems("monitor", "/healthz", 8080, "x")  # the check can fail
    assert checks.route_problems("gateway", "/health", 8080, "x")


def test_prometheus_mounts_the_config_and_the_alert_rules() -> None:
    prom = services()["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prom["volumes"] if v.startswith("./")}
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./deploy/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    config = yaml.safe_load((checks.ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]  # resolved beside the config file
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services(), f"{target}: no compose service {host}"
            assert int(port) == checks.default_port(host), target


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    graf = services()["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in graf["volumes"] if v.startswith("./")}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (checks.ROOT / "deploy/grafana/provisioning/dashboards/framepool.yml").read_text()
    )["providers"][0]
    dash_dir = provider["options"]["path"]
    assert mounts["./deploy/grafana/framepool-dashboard.json"].startswith(dash_dir + "/")
    ds = yaml.safe_load(
        (checks.ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    assert ports_of(services()["prometheus"]) == [(9090, 9090)]
    for path in mounts:
        assert (checks.ROOT / path).exists(), path


def test_the_build_context_keeps_what_pip_install_needs() -> None:
    ignored = {
        line.strip()
        for line in (checks.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), flags=re.M)
    for line in copied:
        for path in line.split():
            assert path not in ignored, path
            assert (checks.ROOT / path).exists(), path
    assert {".git", ".venv", ".env", "tests"} <= ignored
    project = tomllib.loads((checks.ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    modules = [f"{m}.py" for m in project["tool"]["setuptools"].get("py-modules", [])]
    copied_paths = {path for line in copied for path in line.split()}
    assert set(packages) | set(modules) | {"pyproject.toml", "README.md"} <= copied_paths
