"""Debian packages a test needs (prometheus, chromium): installed on demand, else skipped."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure_binary(binary: str, package: str) -> str:
    """Path of ``binary``; installs ``package`` with apt-get when missing (root only), else skips."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{binary} missing and cannot apt-get install {package} (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        capture_output=True,
        text=True,
    )
    path = shutil.which(binary)
    if not path:
        pytest.skip(f"apt-get install {package} failed: {done.stderr[-500:]}")
    return path
