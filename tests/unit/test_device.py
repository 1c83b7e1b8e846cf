"""Pinning a worker before torch loads: CUDA_VISIBLE_DEVICES and how OpenMP waits.

Each case runs in a fresh interpreter, since ``pin_device`` refuses to run once
torch is imported (as it is in the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = (
    "import json, os; from workers.device import pin_device; "
    "d = pin_device({device!r}, {wait!r}); "
    "print(json.dumps([d] + [os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', "
    "'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')]))"
)
_SET_HERE = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES")


def probe(device: str, wait: str = "passive", **env: str) -> list[str | None]:
    clean = {k: v for k, v in os.environ.items() if k not in _SET_HERE}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(device=device, wait=wait)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", ["cpu", "", "PASSIVE", None, None]),
        ("cuda:3", ["cuda:0", "3", "PASSIVE", None, None]),
        ("auto", ["auto", None, "PASSIVE", None, None]),
    ],  # fmt: skip
)
def test_pin_device_sets_the_gpu_and_a_passive_openmp_wait(device: str, expected: list) -> None:
    assert probe(device) == expected


def test_spin_keeps_openmp_threads_awake_for_a_short_while() -> None:
    assert probe("cpu", "spin") == ["cpu", "", None, "30000", "1"]


@pytest.mark.parametrize(
    "user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}, {"KMP_BLOCKTIME": "0"}]
)
@pytest.mark.parametrize("wait", ["passive", "spin"])
def test_a_wait_the_user_set_is_kept_and_nothing_added(user: dict, wait: str) -> None:
    _, _, *waits = probe("cpu", wait, **user)
    names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    assert dict(zip(names, waits, strict=True)) == {n: user.get(n) for n in names}


def test_a_bad_wait_policy_is_refused() -> None:
    from framepool.errors import BadInput
    from workers.device import pin_device

    with pytest.raises(BadInput, match="passive or spin"):
        pin_device("cpu", "sometimes")


@pytest.mark.parametrize(
    ("setting", "models", "expected"),
    [
        ("auto", ["passive"], "passive"),
        ("auto", ["passive", "spin"], "spin"),
        ("auto", [], "passive"),
        ("passive", ["spin"], "passive"),
        ("spin", ["passive"], "spin"),
    ],
)
def test_cpu_wait_policy_auto_spins_when_a_model_asks(
    setting: str, models: list[str], expected: str
) -> None:
    from workers.device import cpu_wait_policy

    assert cpu_wait_policy(setting, models) == expected


def test_the_zoo_spins_for_the_resnets_only() -> None:
    from framepool.manifest import discover
    from framepool.settings import Settings

    known, _ = discover(Settings().models_root)
    waits = {m: known[m].cpu_wait for m in ("noop", "shape_detector", "resnet18", "resnet50")}
    assert waits == {
        "noop": "passive",
        "shape_detector": "passive",
        "resnet18": "spin",
        "resnet50": "spin",
    }


@pytest.mark.parametrize(
    ("models", "setting", "expected"),
    [
        ("shape_detector", None, "passive"),
        ("shape_detector,resnet18", None, "spin"),
        ("resnet18", "passive", "passive"),
    ],
)
def test_the_worker_command_pins_with_its_models_wait(
    monkeypatch: pytest.MonkeyPatch, models: str, setting: str | None, expected: str
) -> None:
    from click.testing import CliRunner

    import framepool.cli as cli
    import framepool.log
    import workers.device
    import workers.main
    from framepool.settings import get_settings

    pinned: list[tuple[str, str]] = []
    monkeypatch.setattr(workers.device, "pin_device", lambda d, w: pinned.append((d, w)) or "cpu")
    monkeypatch.setattr(cli, "require_redis", lambda settings: None)
    monkeypatch.setattr(framepool.log, "configure_logging", lambda settings: None)
    monkeypatch.setattr(workers.main, "run_worker", lambda *a: 0)
    if setting is not None:
        monkeypatch.setenv("CPU_WAIT_POLICY", setting)
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(cli.main, ["worker", "--device", "cpu", "--models", models])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    assert pinned == [("cpu", expected)]


def test_pin_device_refuses_after_torch_is_imported() -> None:
    import torch  # noqa: F401  (the point of the test)

    from workers.device import pin_device

    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_device("cpu")
