"""Pinning a worker before torch loads: CUDA_VISIBLE_DEVICES and OMP_WAIT_POLICY.

Each case runs in a fresh interpreter, since ``pin_device`` refuses to run once
torch is imported (as it is in the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = (
    "import json, os; from workers.device import pin_device; d = pin_device({device!r}); "
    "print(json.dumps([d, os.environ.get('CUDA_VISIBLE_DEVICES'), "
    "os.environ.get('OMP_WAIT_POLICY')]))"
)


def probe(device: str, **env: str) -> list[str | None]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "CUDA_VISIBLE_DEVICES")
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(device=device)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", ["cpu", "", "PASSIVE"]),
        ("cuda:3", ["cuda:0", "3", "PASSIVE"]),
        ("auto", ["auto", None, "PASSIVE"]),
    ],  # fmt: skip
)
def test_pin_device_sets_the_gpu_and_a_passive_openmp_wait(device: str, expected: list) -> None:
    assert probe(device) == expected


def test_a_wait_policy_the_user_set_is_kept() -> None:
    assert probe("cpu", OMP_WAIT_POLICY="ACTIVE")[2] == "ACTIVE"


def test_pin_device_refuses_after_torch_is_imported() -> None:
    import torch  # noqa: F401  (the point of the test)

    from workers.device import pin_device

    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_device("cpu")
