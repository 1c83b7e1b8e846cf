"""What the GPU host runs with, and what framepool needs that it lacks.

``run.sh`` runs it before the checks: it prints the versions that matter and each
requirement left unmet (framepool's own, from pyproject.toml, and those of the
wheels carried in ``--site``) as a warning; the tests and the bench are the judges.
With ``--peer-site`` (``run.sh peers``, with that site first on ``PYTHONPATH``) it
adds the peers' versions, glibc, the libpython Triton's Python backend stub links,
and the unmet requirements of the peer wheels, less those left out on purpose
(``peer_wheels.NOT_NEEDED``). Only the standard library and ``packaging`` (on the
host's image) are imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import sys
import sysconfig
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from benchmarks.gpu_host.peer_wheels import NOT_NEEDED

ROOT = Path(__file__).resolve().parents[2]
#: framepool's dependencies that tests/gpu and the GPU benches never import: not
#: carried (docs/gpu-host.md says why).
NOT_CARRIED = frozenset({"av", "fastapi", "uvicorn", "flower"})
SHOWN = ("torch", "torchvision", "numpy", "pillow", "msgpack", "psutil", "click", "rich",
         "httpx", "prometheus-client", "nvidia-ml-py", "pytest", "pytest-timeout",
         "typing-extensions", "python-dateutil", "packaging")  # fmt: skip
PEERS_SHOWN = ("ray", "nvidia-pytriton", "tritonclient", "grpcio", "protobuf", "uvloop")


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def unmet(requirement: str) -> str | None:
    """Why ``requirement`` (a PEP 508 string, extras ignored) is not met here, or None."""
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return None
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    have = version(req.name)
    if have is None:
        return f"{req}: not installed"
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        return f"{req}: {have} installed"
    return None


def framepool_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps: list[str] = project["dependencies"]
    return [d for d in deps if canonicalize_name(Requirement(d).name) not in NOT_CARRIED]


def carried_requirements(site: Path) -> Iterable[tuple[str, str]]:
    for dist in md.distributions(path=[str(site)]):
        for requirement in dist.requires or []:
            yield dist.metadata["Name"], requirement


def libpython() -> str:
    """Where the libpython that Triton's Python backend stub links by name is, if any."""
    name = f"libpython{sysconfig.get_python_version()}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
    found = [d for d in (libdir, "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/local/lib")
             if d and (Path(d) / name).exists()]  # fmt: skip
    where = found[0] if found else "not found (Triton's Python backend stub needs it)"
    return f"{name}: {where} (Py_ENABLE_SHARED {int(shared)}, LIBDIR {libdir})"


def peers(site: Path) -> list[str]:
    """The peers' versions, glibc, libpython; the unmet requirements of ``site``'s wheels."""
    print("peers: " + ", ".join(f"{n} {version(n) or '-'}" for n in PEERS_SHOWN)
          + f", numpy {version('numpy') or '-'}")  # fmt: skip
    libc, libc_version = platform.libc_ver()
    print(f"peers: {libc or 'libc'} {libc_version or '?'} (nvidia-pytriton's wheel needs glibc"
          f" >= 2.35); {libpython()}")  # fmt: skip
    left_out = {canonicalize_name(n) for n in NOT_NEEDED}
    return [f"{who} needs {why}" for who, r in carried_requirements(site)
            if canonicalize_name(Requirement(r).name) not in left_out
            and (why := unmet(r))]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site", type=Path, help="where the carried wheels were installed")
    parser.add_argument("--peer-site", type=Path, help="where the peer wheels were installed")
    args = parser.parse_args(argv)
    print("versions: " + ", ".join(f"{n} {version(n) or '-'}" for n in SHOWN))
    problems = [f"framepool needs {why}" for r in framepool_requirements() if (why := unmet(r))]
    if args.site is not None and args.site.is_dir():
        problems += [f"{who} needs {why}" for who, r in carried_requirements(args.site)
                     if (why := unmet(r))]  # fmt: skip
    if args.peer_site is not None and args.peer_site.is_dir():
        problems += peers(args.peer_site)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    print(f"requirements: {len(problems) or 'none'} unmet"
          f" (not carried on purpose: {', '.join(sorted(NOT_CARRIED))})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
