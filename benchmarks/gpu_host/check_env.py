"""What the GPU host runs with, and what framepool needs that it lacks.

``run.sh`` runs it before the checks: it prints the versions that matter and each
requirement left unmet (framepool's own, from pyproject.toml, and those of the
wheels carried in ``--site``) as a warning; the tests and the bench are the judges.
Only the standard library and ``packaging`` (on the host's image) are imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: framepool's dependencies that tests/gpu and the GPU benches never import: not
#: carried (docs/gpu-host.md says why).
NOT_CARRIED = frozenset({"av", "fastapi", "uvicorn", "flower"})
SHOWN = ("torch", "torchvision", "numpy", "pillow", "msgpack", "psutil", "click", "rich",
         "httpx", "prometheus-client", "nvidia-ml-py", "pytest", "pytest-timeout",
         "typing-extensions", "python-dateutil", "packaging")  # fmt: skip


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site", type=Path, help="where the carried wheels were installed")
    args = parser.parse_args(argv)
    print("versions: " + ", ".join(f"{n} {version(n) or '-'}" for n in SHOWN))
    problems = [f"framepool needs {why}" for r in framepool_requirements() if (why := unmet(r))]
    if args.site is not None and args.site.is_dir():
        problems += [f"{who} needs {why}" for who, r in carried_requirements(args.site)
                     if (why := unmet(r))]  # fmt: skip
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    print(f"requirements: {len(problems) or 'none'} unmet"
          f" (not carried on purpose: {', '.join(sorted(NOT_CARRIED))})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
