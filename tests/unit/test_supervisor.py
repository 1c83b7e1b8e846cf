"""The supervisor's plan (names, pinning, placement by GPU memory) and its restart policy.

Placement reads GPU memory through fake NVML readings; the restart and give-up
logic runs real (tiny) child processes instead of workers.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from framepool.errors import BadInput, ModelRefused
from framepool.nvml import GpuReading
from framepool.settings import Settings
from workers import supervisor
from workers.placement import NvmlMemory, WorkerSpec, plan_for, plan_workers
from workers.supervisor import EXIT_GAVE_UP, RestartPolicy, Supervisor, describe_exit


def reading(index: int, total_mb: float, used_mb: float) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", "H100", 0.0, used_mb, total_mb, 40.0, 100.0,
                      1980.0, 2619.0, None)  # fmt: skip


def test_cpu_plan_names_and_pins() -> None:
    plan = plan_workers("none", 2, ["shape_detector"], "box")
    assert [(s.name, s.device) for s in plan.specs] == [("cpu-1@box", "cpu"), ("cpu-2@box", "cpu")]
    assert all(s.env == {"CUDA_VISIBLE_DEVICES": ""} for s in plan.specs)
    assert plan.specs[0].argv()[-4:] == ["--models", "shape_detector", "--name", "cpu-1@box"]


def test_cpu_workers_share_out_the_cores() -> None:
    def threads(plan: object) -> list[str]:
        return [s.env_defaults.get("OMP_NUM_THREADS", "-") for s in plan.specs]  # type: ignore[attr-defined]

    assert threads(plan_workers("none", 2, ["m"], "box", cpus=lambda: 2)) == ["1", "1"]
    assert threads(plan_workers("none", 1, ["m"], "box", cpus=lambda: 8)) == ["8"]
    assert threads(plan_workers("none", 3, ["m"], "box", cpus=lambda: 8)) == ["2", "2", "2"]
    assert threads(plan_workers("none", 4, ["m"], "box", cpus=lambda: 2)) == ["1"] * 4
    # GPU workers keep torch's own default
    assert threads(plan_workers("0", 2, ["m"], "box", cpus=lambda: 2)) == ["-", "-"]


def test_one_cpu_worker_on_several_cores_gets_a_hint() -> None:
    (note,) = plan_workers("none", 1, ["m"], "box", cpus=lambda: 4).notes
    assert "one CPU worker with 4 torch threads" in note and "--workers-per-gpu 4" in note
    assert plan_workers("none", 4, ["m"], "box", cpus=lambda: 4).notes == []
    assert plan_workers("none", 1, ["m"], "box", cpus=lambda: 1).notes == []


def test_the_environment_wins_over_a_specs_defaults(tmp_path: Path) -> None:
    key = "FRAMEPOOL_TEST_THREADS"  # a name nothing else sets
    code = f"import os; print('threads', os.environ['{key}'], os.environ['X'])"
    out = {}
    for name, env in (("cpu-1@box", {}), ("cpu-2@box", {key: "7"})):
        spec = Script(name, code)
        spec.env_defaults = {key: "1", "X": "default"}
        spec.env = {"X": "spec"}
        sup = Supervisor([spec], env=env, log_dir=tmp_path)
        sup.start()
        proc = sup.children[0].proc
        assert proc is not None
        proc.wait(30)
        out[name] = (tmp_path / f"{name.replace('@', '_')}.log").read_text().strip()
        sup.stop()
    assert out == {"cpu-1@box": "threads 1 spec", "cpu-2@box": "threads 7 spec"}


def test_gpu_plan_one_process_per_gpu_and_slot_pinned() -> None:
    plan = plan_workers("0,1", 2, ["a", "b"], "box")
    assert [s.name for s in plan.specs] == ["gpu0-1@box", "gpu0-2@box", "gpu1-1@box", "gpu1-2@box"]
    assert plan.specs[2].device == "cuda:1"
    assert plan.specs[2].env == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert plan_workers("all", 1, ["a"], "box", count=lambda: 3).specs[-1].name == "gpu2-1@box"
    assert [s.device for s in plan_workers("all", 1, ["a"], "box", count=lambda: 0).specs] == [
        "cpu"
    ]


@pytest.mark.parametrize("bad", ["x", "0,x", "-1", "0,0", ""])
def test_bad_gpus_are_refused(bad: str) -> None:
    with pytest.raises(BadInput, match="--gpus"):
        plan_workers(bad, 1, ["a"], "box")


def test_models_go_where_every_slots_copy_fits() -> None:
    # GPU 0: 2000 MB free; GPU 1: 600 MB free; 512 MB reserve; two workers per GPU
    memory = NvmlMemory([reading(0, 16000, 14000), reading(1, 16000, 15400)])
    mb = {"resnet50": 700.0, "shape": 40.0}
    plan = plan_workers("0,1", 2, ["resnet50", "shape"], "box", memory=memory, model_mb=mb,
                        reserve_mb=512)  # fmt: skip
    by_name = {s.name: list(s.models) for s in plan.specs}
    assert by_name["gpu0-1@box"] == ["resnet50", "shape"]  # 2 x 700 + 2 x 40 <= 1488
    assert by_name["gpu1-2@box"] == ["shape"]  # 88 MB of room: 2 x 40 only
    assert any("GPU 1: resnet50 left off: 2 x 700 MB" in n for n in plan.notes)
    # in --models order: the first model takes the room the second wanted
    tight = plan_workers("0", 1, ["resnet50", "shape"], "box", memory=memory,
                         model_mb={"resnet50": 1460.0, "shape": 40.0}, reserve_mb=512)  # fmt: skip
    assert [list(s.models) for s in tight.specs] == [["resnet50"], ["shape"]]
    assert tight.specs[1].device == "cpu"  # shape fits no GPU now: CPU fallback


def test_a_model_that_fits_no_gpu_without_fallback_refuses_the_plan() -> None:
    memory = NvmlMemory([reading(0, 8000, 7000)])
    with pytest.raises(ModelRefused, match="GPU_FALLBACK_TO_CPU is off"):
        plan_workers("0", 1, ["big"], "box", memory=memory, model_mb={"big": 4000.0},
                     reserve_mb=512, fallback_to_cpu=False)  # fmt: skip
    lone = plan_workers("0", 1, ["big"], "box", memory=memory, model_mb={"big": 4000.0},
                        reserve_mb=512)  # fmt: skip
    assert [s.name for s in lone.specs] == ["cpu-1@box"]
    assert any("no model fits" in n for n in lone.notes)


def test_unknown_gpu_memory_places_everything() -> None:
    memory = NvmlMemory([GpuReading(0, None, None, None, None, None, None, None, None, None, None)])
    plan = plan_workers("0", 1, ["a", "b"], "box", memory=memory, model_mb={"a": 9e9})
    assert [list(s.models) for s in plan.specs] == [["a", "b"]]
    assert "memory unknown" in plan.notes[0]


def test_plan_for_reads_nvml_and_the_manifests(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = NvmlMemory([reading(0, 16000, 14000)])  # 2000 MB free
    monkeypatch.setattr(NvmlMemory, "read", classmethod(lambda cls: memory))
    s = Settings(gpu_memory_reserve_mb=512)
    plan = plan_for(s, "0", 2, ["resnet50", "shape_detector"], "box")  # 700 and 40 MB
    assert [list(x.models) for x in plan.specs] == [["resnet50", "shape_detector"]] * 2
    plan = plan_for(s, "0", 3, ["resnet50", "shape_detector"], "box")  # 3 x 700 > 1488
    assert [x.name for x in plan.specs][-1] == "cpu-3@box"
    assert plan.specs[0].models == ["shape_detector"]
    with pytest.raises(BadInput, match="no GPU 1 on this machine"):
        plan_for(s, "0,1", 1, ["shape_detector"], "box")


def test_plan_for_without_enable_gpu_is_cpu_only() -> None:
    plan = plan_for(Settings(enable_gpu=False), "0,1", 1, ["shape_detector"], "box")
    assert [s.device for s in plan.specs] == ["cpu"] and "ENABLE_GPU=false" in plan.notes[0]


# ------------------------------------------------------------------ supervision
class Script(WorkerSpec):
    """A worker spec that runs a Python one-liner instead of ``framepool worker``."""

    def __init__(self, name: str, code: str) -> None:
        super().__init__(name, "cpu", ["m"])
        self.code = code

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.code]


def poll_until(sup: Supervisor, done: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.poll()
        if callable(done) and done():
            return
        time.sleep(0.02)
    raise TimeoutError("supervisor did not get there")


def test_restart_backoff_doubles_and_is_capped() -> None:
    p = RestartPolicy(max_restarts=5, window_s=60, backoff_s=1.0)
    assert [p.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_worker_that_keeps_exiting_is_given_up_on_loudly(tmp_path: Path) -> None:
    spec = Script("cpu-1@box", "import sys; print('model broken on purpose'); sys.exit(4)")
    sup = Supervisor([spec], policy=RestartPolicy(2, 60.0, 0.01), log_dir=tmp_path)
    sup.start()
    poll_until(sup, lambda: sup.gave_up)
    assert sup.gave_up == ["cpu-1@box"] and sup.exit_code == EXIT_GAVE_UP == 6
    (message,) = sup.messages
    assert "exited 3 times within 60 s (WORKER_MAX_RESTARTS=2)" in message
    assert "exit 4 (no model could be loaded): giving up" in message
    assert "| model broken on purpose" in message  # the tail of its log
    assert (tmp_path / "cpu-1_box.log").read_text().count("broken") == 3


def test_a_crash_now_and_then_is_restarted_forever(tmp_path: Path) -> None:
    spec = Script("cpu-1@box", "import sys; sys.exit(5)")
    clock = [0.0]
    sup = Supervisor([spec], policy=RestartPolicy(1, 10.0, 0.01), clock=lambda: clock[0])
    sup.start()
    for _ in range(4):  # each exit 21 s after the last: never 2 within the window
        first = sup.children[0].proc
        assert first is not None
        first.wait()
        clock[0] += 20.0
        sup.poll()  # the exit is seen, a restart scheduled
        clock[0] += 1.0
        sup.poll()  # and done
        assert sup.children[0].proc is not first
    assert not sup.gave_up


def test_stop_sigterms_then_kills_what_ignores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "STOP_MARGIN_S", 0.2)
    stubborn = Script("cpu-1@box", "import signal, time; signal.signal(signal.SIGTERM, "
                      "signal.SIG_IGN); print('up', flush=True); time.sleep(60)")  # fmt: skip
    polite = Script("cpu-2@box", "import time; time.sleep(60)")
    sup = Supervisor([stubborn, polite], grace_s=0.3)
    sup.start()
    time.sleep(0.5)
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 10
    codes = [c.proc.returncode for c in sup.children if c.proc is not None]
    assert codes == [-signal.SIGKILL, -signal.SIGTERM]


def test_hurry_stops_waiting_for_the_drain() -> None:
    stubborn = Script("cpu-1@box", "import signal, time; signal.signal(signal.SIGTERM, "
                      "signal.SIG_IGN); time.sleep(60)")  # fmt: skip
    sup = Supervisor([stubborn], grace_s=60.0)
    sup.start()
    time.sleep(0.3)
    sup.hurry()  # a second Ctrl-C
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 10
    assert sup.children[0].proc is not None and sup.children[0].proc.returncode == -signal.SIGKILL


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(5) == "exit 5 (its GPU was lost)"
    assert describe_exit(77) == "exit 77"
