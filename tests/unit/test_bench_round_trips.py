"""``benchmarks.round_trips``: every case runs against a real Redis and is timed."""

from __future__ import annotations

import pytest

from benchmarks.round_trips import main, per_call_ms


def test_per_call_ms_is_the_median_of_the_calls() -> None:
    import time

    assert per_call_ms(lambda: time.sleep(0.002), 5, 0.0) >= 2.0
    assert per_call_ms(lambda: None, 3, 0.001) < 1.0


def test_it_times_each_case_back_to_back_and_apart(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--calls", "3"]) == 0
    out = capsys.readouterr().out
    for label in ("back to back", "10 ms apart"):
        line = next(x for x in out.splitlines() if x.startswith(label))
        for case in (
            "PING",
            "GET 72 KB",
            "SET 72 KB",
            "call after BRPOP",
            "FrameProducer.submit",
            "Celery backend built",
        ):
            assert case in line
    with pytest.raises(SystemExit):
        main(["--calls", "0"])
