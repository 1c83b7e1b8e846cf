"""OOM and sticky CUDA error classification; the batch cap that OOMs shrink."""

from __future__ import annotations

import pytest
import torch

from framepool.errors import DeviceLost, GpuOutOfMemory, ModelError
from workers.oom import BatchCap, is_oom, is_sticky_cuda_error

OOM_TORCH = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity; "
    "77.00 GiB already allocated)"
)

STICKY_MESSAGES = [
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: an illegal instruction was encountered",
    "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`",
    "CUDA error: unspecified launch failure",
    "CUDA error: misaligned address",
    "CUDA error: GPU is lost",
    "CUDA error: uncorrectable ECC error encountered",
    "CUDA error: CUDA-capable device(s) is/are busy or unavailable",
]


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError(OOM_TORCH),
        torch.OutOfMemoryError("anything"),
        GpuOutOfMemory("batch of 64 did not fit"),
        RuntimeError(OOM_TORCH),
        RuntimeError("CUDA error: out of memory"),
    ],
)
def test_oom_true(exc: BaseException) -> None:
    assert is_oom(exc)
    assert not is_sticky_cuda_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("out of memory"),
        ValueError("memory layout must be contiguous"),
        RuntimeError("expected input with 3 channels, memory is fine"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        KeyError("out of memory"),
        ModelError("model returned 3 outputs for 4 frames"),
        DeviceLost("gpu 0 lost"),
    ],
)
def test_oom_false(exc: BaseException) -> None:
    assert not is_oom(exc)


def test_oom_follows_explicit_cause_only() -> None:
    try:
        try:
            raise torch.cuda.OutOfMemoryError(OOM_TORCH)
        except RuntimeError as inner:
            raise ModelError("det failed") from inner
    except ModelError as wrapped:
        assert is_oom(wrapped)
    try:
        try:
            raise RuntimeError(OOM_TORCH)
        except RuntimeError:
            raise ValueError("while handling") from None
    except ValueError as suppressed:
        assert not is_oom(suppressed)


@pytest.mark.parametrize("message", STICKY_MESSAGES)
def test_sticky_runtime_errors(message: str) -> None:
    assert is_sticky_cuda_error(RuntimeError(message))
    assert not is_oom(RuntimeError(message))


@pytest.mark.parametrize("message", STICKY_MESSAGES[:3])
def test_sticky_accelerator_errors(message: str) -> None:
    accel = getattr(torch, "AcceleratorError", None)
    if accel is None:
        pytest.skip("this torch has no AcceleratorError")
    assert is_sticky_cuda_error(accel(message))


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError(OOM_TORCH),
        torch.cuda.OutOfMemoryError(OOM_TORCH),
        RuntimeError("CUDA error: invalid argument"),
        ValueError("an illegal memory access was encountered"),
        ModelError("illegal instruction in the model? no"),
        GpuOutOfMemory("batch too big"),
    ],
)
def test_not_sticky(exc: BaseException) -> None:
    assert not is_sticky_cuda_error(exc)


def test_device_lost_is_sticky_and_wrapped_causes_count() -> None:
    assert is_sticky_cuda_error(DeviceLost("gpu 1"))
    wrapped = ModelError("det failed")
    wrapped.__cause__ = RuntimeError("CUDA error: device-side assert triggered")
    assert is_sticky_cuda_error(wrapped)


def test_cause_cycle_terminates() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert not is_oom(a) and not is_sticky_cuda_error(a)


# ------------------------------------------------------------------ BatchCap
def test_cap_starts_at_limit_and_halves_on_oom() -> None:
    cap = BatchCap(limit=32, clock=lambda: 123.0)
    assert cap.current == 32
    assert cap.on_oom(32) == 16
    assert cap.on_oom(16) == 8
    assert cap.on_oom(5) == 2
    assert cap.snapshot() == {"limit": 32, "current": 2, "ooms": 3, "last_oom_at": 123.0}


def test_cap_never_below_one() -> None:
    cap = BatchCap(limit=4)
    assert cap.on_oom(1) == 1
    assert cap.on_oom(1) == 1
    assert cap.on_oom(0) == 1
    assert cap.current == 1


def test_cap_never_above_limit_on_oom_of_a_larger_batch() -> None:
    cap = BatchCap(limit=8)
    assert cap.on_oom(64) == 8


def test_cap_grows_back_after_grow_after_successes_at_the_cap() -> None:
    cap = BatchCap(limit=16, grow_after=3)
    cap.on_oom(16)  # -> 8
    cap.on_oom(8)  # -> 4
    assert [cap.on_success(4) for _ in range(3)] == [4, 4, 8]
    assert [cap.on_success(8) for _ in range(2)] == [8, 8]
    assert cap.on_success(8) == 16
    for _ in range(10):
        assert cap.on_success(16) == 16  # never above the limit
    assert cap.snapshot()["current"] == 16


def test_small_batches_do_not_grow_the_cap_and_oom_resets_the_streak() -> None:
    cap = BatchCap(limit=16, grow_after=2)
    cap.on_oom(16)  # -> 8
    for _ in range(10):
        cap.on_success(3)  # light traffic proves nothing about 8
    assert cap.current == 8
    cap.on_success(8)
    cap.on_oom(8)  # -> 4, streak reset
    assert cap.on_success(4) == 4
    assert cap.on_success(4) == 8


def test_cap_limit_not_a_power_of_two() -> None:
    cap = BatchCap(limit=12, grow_after=1)
    cap.on_oom(12)  # -> 6
    cap.on_oom(6)  # -> 3
    assert cap.on_success(3) == 6
    assert cap.on_success(6) == 12
    assert cap.on_success(12) == 12


def test_cap_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        BatchCap(limit=0)
    with pytest.raises(ValueError):
        BatchCap(limit=4, grow_after=0)
