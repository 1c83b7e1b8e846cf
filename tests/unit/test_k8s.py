"""deploy/k8s: the manifests parse, hang together, and name only real framepool things.

Commands, flags, settings, probe routes and ports are checked against the code
(tests/deploy_checks.py, shared with the compose test). ``kubectl kustomize``
builds the whole set when kubectl is on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from framepool import keys
from tests import deploy_checks as checks

yaml = pytest.importorskip("yaml")

K8S = checks.ROOT / "deploy" / "k8s"
OUR_IMAGE = "framepool"
WORKLOADS = {"Deployment", "StatefulSet"}


def docs() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest (kustomization.yaml excluded)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((path.name, doc))
    return out


def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))
    return doc


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in docs() if d["kind"] == kind}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def our_containers() -> list[tuple[str, dict[str, Any]]]:
    """(workload name, container) for every container running the framepool image."""
    return [
        (d["metadata"]["name"], c)
        for _, d in docs()
        if d["kind"] in WORKLOADS
        for c in containers(d)
        if c["image"] == OUR_IMAGE
    ]


def args_of(container: dict[str, Any]) -> list[str]:
    command = container.get("command")
    assert command in (None, ["framepool"]), f"{container['name']}: command {command}"
    return [str(a) for a in container["args"]]


def secret_keys() -> set[str]:
    lines = (K8S / "secrets.env.example").read_text(encoding="utf-8").splitlines()
    return {ln.split("=", 1)[0] for ln in lines if ln.strip() and not ln.startswith("#")}


def configmap_keys(name: str) -> set[str]:
    return set(of_kind("ConfigMap")[name]["data"])


def env_names(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= configmap_keys(source["configMapRef"]["name"])
        if "secretRef" in source:
            names |= secret_keys()
    return names


def test_every_manifest_parses_with_kind_and_name_and_no_namespace() -> None:
    found = docs()
    assert found
    for file, doc in found:
        assert doc.get("apiVersion") and doc.get("kind"), file
        assert doc["metadata"].get("name"), file
        assert "namespace" not in doc["metadata"], f"{file}: {doc['metadata']['name']}"


def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    [gen] = kustomization()["secretGenerator"]
    assert gen["name"] == "framepool-secrets" and gen["envs"] == ["secrets.env"]
    assert "secrets.env" in (K8S / ".gitignore").read_text()
    assert [i["name"] for i in kustomization()["images"]] == [OUR_IMAGE]


def test_workloads_select_their_own_pods_and_services_select_workloads() -> None:
    workloads = [d for _, d in docs() if d["kind"] in WORKLOADS]
    pod_labels = {}
    for w in workloads:
        selector = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), w["metadata"]["name"]
        pod_labels[w["metadata"]["name"]] = labels
    for name, svc in of_kind("Service").items():
        targets = [
            w
            for w, labels in pod_labels.items()
            if svc["spec"]["selector"].items() <= labels.items()
        ]
        assert len(targets) == 1, f"service {name} selects {targets}"
        [workload] = [w for w in workloads if w["metadata"]["name"] == targets[0]]
        ports = {p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        names = {p["name"] for c in containers(workload) for p in c.get("ports", []) if "name" in p}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports | names, f"service {name}: {port}"
    # two workloads with overlapping selectors would fight over pods
    selectors = [tuple(sorted(w["spec"]["selector"]["matchLabels"].items())) for w in workloads]
    assert len(set(selectors)) == len(selectors)


def test_every_framepool_container_runs_a_real_command_with_real_settings() -> None:
    found = our_containers()
    assert {args_of(c)[0] for _, c in found} == {
        "worker",
        "monitor",
        "gateway",
        "flower",
        "callbacks",
    }
    problems = []
    for workload, container in found:
        problems += checks.cli_problems(args_of(container), workload)
        problems += checks.env_problems(env_names(container), workload)
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", workload
        names = list(env)
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), workload
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "framepool-secrets" and ref["key"] in secret_keys()
    assert problems == []
    assert checks.env_problems(secret_keys() - {"REDIS_PASSWORD"}, "secrets.env") == []
    assert configmap_keys("framepool-config") <= checks.setting_env_names()
    assert "SERVER_HOST" in configmap_keys("framepool-config")  # services listen beyond localhost


def test_worker_deployments_take_one_gpu_each_on_their_gpu_class() -> None:
    workers = {
        name: d
        for name, d in of_kind("Deployment").items()
        if any(c["image"] == OUR_IMAGE and args_of(c)[0] == "worker" for c in containers(d))
    }
    assert len(workers) >= 2
    products = set()
    for name, d in workers.items():
        spec = d["spec"]["template"]["spec"]
        [container] = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        args = args_of(container)
        assert args[args.index("--device") + 1] == "cuda:0", name
        products.add(spec["nodeSelector"]["nvidia.com/gpu.product"])
        assert "replicas" not in d["spec"], f"{name}: KEDA owns the replica count"
        assert spec["terminationGracePeriodSeconds"] >= 30, name
    assert len(products) == len(workers)  # one Deployment per GPU class


def test_probes_point_at_real_routes_on_the_service_port() -> None:
    probed = set()
    for workload, container in our_containers():
        service = args_of(container)[0]
        ports = {p["containerPort"] for p in container.get("ports", [])}
        if checks.default_port(service) is not None:
            assert ports == {checks.default_port(service)}, workload
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            assert "exec" not in probe, f"{workload}: no framepool command is a health check"
            if "httpGet" in probe:
                get = probe["httpGet"]
                assert checks.route_problems(service, get["path"], get["port"], workload) == []
                probed.add((service, get["path"]))
            else:
                assert probe["tcpSocket"]["port"] in ports, workload
        if service in ("worker", "callbacks"):
            assert "livenessProbe" not in container and "ports" not in container, workload
    assert probed == {("monitor", "/ready"), ("gateway", "/health")}


def test_redis_keeps_an_aof_on_a_volume_and_needs_the_secret_password() -> None:
    [redis] = of_kind("StatefulSet").values()
    [container] = containers(redis)
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
    assert container["volumeMounts"][0]["mountPath"] == "/data"
    claim = redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert container["volumeMounts"][0]["name"] == claim
    assert redis["spec"]["serviceName"] in of_kind("Service")
    assert of_kind("Service")["redis"]["spec"]["ports"][0]["port"] == 6379


def test_keda_scales_worker_deployments_on_real_queue_lists() -> None:
    scaled = of_kind("ScaledObject")
    assert scaled
    deployments = of_kind("Deployment")
    auths = of_kind("TriggerAuthentication")
    for name, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, f"{name}: no Deployment {target}"
        [container] = containers(deployments[target])
        served = checks.worker_models(args_of(container))
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis", name
            meta = trigger["metadata"]
            # the main list (not a priority sub-list) of a queue the target worker consumes
            model = keys.model_from_queue(meta["listName"])
            assert model in served, f"{name}: {meta['listName']} is not a queue of {target}"
            assert meta["listName"] == keys.queue_lists(model)[0] == keys.queue_name(model)
            assert meta["address"] == "redis.NAMESPACE.svc:6379", name
            assert int(meta["listLength"]) > 0
            auth = auths[trigger["authenticationRef"]["name"]]
            [ref] = auth["spec"]["secretTargetRef"]
            assert ref["parameter"] == "password" and ref["key"] in secret_keys()
            assert ref["name"] == "framepool-secrets"


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not on PATH (kubectl kustomize builds the set)"
)
@pytest.mark.parametrize("namespace", ["framepool", "video-ai"])
def test_kustomize_builds_the_set_and_points_keda_at_the_namespace(
    tmp_path: Path, namespace: str
) -> None:
    assert KUBECTL is not None
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    shutil.copy(work / "secrets.env.example", work / "secrets.env")
    text = (work / "kustomization.yaml").read_text()
    (work / "kustomization.yaml").write_text(
        text.replace("namespace: framepool", f"namespace: {namespace}")
    )
    done = subprocess.run(
        [KUBECTL, "kustomize", str(work)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert {d["metadata"]["namespace"] for d in built} == {namespace}
    kinds = [d["kind"] for d in built]
    assert kinds.count("Secret") == 1 and "ScaledObject" in kinds
    for d in built:
        if d["kind"] == "ScaledObject":
            for t in d["spec"]["triggers"]:
                assert t["metadata"]["address"] == f"redis.{namespace}.svc:6379"
        if d["kind"] in WORKLOADS:
            for c in containers(d):
                assert c["image"] in ("framepool:0.1.0", "redis:7.2-alpine"), c["image"]
