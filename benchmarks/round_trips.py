"""What one Redis round trip costs here, with the cores busy and with them idle.

``python -m benchmarks.round_trips [--calls 300]`` starts a private Redis (as the
benchmarks do) and times, as the median ms of ``--calls`` calls, back to back
(the cores stay busy) and 10 ms apart (they go idle between calls, as with a lone
frame): PING; GET and SET of a 640x480 JPEG (~72 KB); the consumer's call after
BRPOP (``framepool.broker.POP_MANY`` with one message and its claim-checked frame);
and ``FrameProducer.submit`` of one frame (its one round trip, ``producer/enqueue.py``,
and the work around it). docs/benchmarks.md quotes it (*What a frame's time is
made of*): on a VM an idle core takes time to wake. Two cases are no round trip:
a frame's message built, its checks included (``FrameProducer._prepare``, then
``producer.messages.FrameMessages.build`` from the message kept for its queue);
and what a thread's first ``app.backend`` costs (Celery builds a Redis result
backend per thread; a reader thread of ``FrameProducer`` no longer pays it,
``producer.result_wait.decode_with``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.harness import median, test_frames
from benchmarks.sandbox import run_measure

GAPS_S = (0.0, 0.01)


def per_call_ms(fn: Callable[[], Any], calls: int, gap_s: float) -> float:
    """Median ms of ``calls`` calls of ``fn``, ``gap_s`` apart."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        if gap_s:
            time.sleep(gap_s)
    return median(times)


def measure(sb: Any, calls: int) -> dict[str, Any]:
    import redis

    from framepool import keys
    from framepool.broker import POP_MANY
    from framepool.settings import Settings
    from producer import FrameProducer

    client = redis.Redis.from_url(sb.redis_url)
    jpeg = test_frames(1, quality=90)[0]
    client.set(keys.frame_data("rt"), jpeg)
    message = json.dumps({"body": "x" * 600, "headers": {"id": "rt"}, "properties": {
        "delivery_tag": "rt", "delivery_info": {"exchange": "", "routing_key": "rt"}}})  # fmt: skip
    sha = client.script_load(POP_MANY)
    producer = FrameProducer(Settings(redis_url=sb.redis_url))
    seq = iter(range(10**9))

    def submit() -> None:  # no worker: the frames stay queued (2 x --calls of them)
        producer.submit("resnet18", jpeg, camera_id="rt", seq=next(seq))

    cases: dict[str, Callable[[], Any]] = {
        "PING": client.ping,
        "GET 72 KB": lambda: client.get(keys.frame_data("rt")),
        "SET 72 KB": lambda: client.set("rt:set", jpeg),
        "call after BRPOP": lambda: client.evalsha(sha, 3, "rt:q", "rt:unacked", "rt:index", 0,
                                                   time.time(), keys.frame_data(""), message),
        "FrameProducer.submit": submit,
        # no round trip: the message of one frame (producer/messages.py), kept one filled in
        "frame message built": lambda: producer._messages.build(
            [producer._prepare("resnet18", jpeg)], True
        ),
        "Celery backend built": producer.app._get_backend,  # a thread's first app.backend
    }  # fmt: skip
    out: dict[str, Any] = {}
    try:
        for gap in GAPS_S:
            label = "back to back" if not gap else f"{gap * 1000:.0f} ms apart"
            out[label] = {name: round(per_call_ms(fn, calls, gap), 3) for name, fn in cases.items()}
            print(f"{label:14s} " + ", ".join(f"{k} {v:.3f}" for k, v in out[label].items()))
    finally:
        producer.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error("--calls must be >= 1")
    res = run_measure(lambda sb: measure(sb, args.calls))
    return res if isinstance(res, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
