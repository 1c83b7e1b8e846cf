"""The consumer's prefetched claim-checked frames: taken once, bounded in bytes."""

from __future__ import annotations

from framepool.broker import FramePrefetch


def test_a_frame_is_taken_once() -> None:
    p = FramePrefetch()
    p.put("a", b"xyz")
    assert p.take("a") == b"xyz" and p.take("a") is None and len(p) == 0


def test_the_oldest_frames_go_first_past_the_byte_limit() -> None:
    p = FramePrefetch(max_bytes=10)
    p.put("a", b"1234")
    p.put("b", b"5678")
    p.put("a", b"12")  # put again: replaced, counted once
    assert p._bytes == 6
    p.put("c", b"abcdef")  # 12 bytes: the oldest ("b") goes
    assert p.take("b") is None
    assert p.take("a") == b"12" and p.take("c") == b"abcdef"
    assert p._bytes == 0
    p.put("huge", b"x" * 11)  # larger than the limit on its own: not kept
    assert p.take("huge") is None and p._bytes == 0


def test_a_take_waits_for_a_frame_whose_call_is_in_flight() -> None:
    import threading
    import time

    p = FramePrefetch()
    p.expect("a")
    threading.Timer(0.05, p.arrived, ("a", b"bytes")).start()
    began = time.monotonic()
    assert p.take("a", wait_s=5) == b"bytes"
    assert time.monotonic() - began < 4  # woken by the arrival, not the timeout
    assert p.take("a", wait_s=5) is None  # nothing in flight now: no wait


def test_a_call_that_comes_back_without_the_frame_lets_the_task_read_it() -> None:
    p = FramePrefetch()
    p.expect("a")
    p.arrived("a", None)
    assert p.take("a", wait_s=5) is None and not p._coming


def test_without_a_wait_a_frame_in_flight_is_not_waited_for() -> None:
    p = FramePrefetch()
    p.expect("a")
    assert p.take("a") is None
    p.arrived("a", b"late")
    assert p.take("a") == b"late"
