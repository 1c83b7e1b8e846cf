"""The monitor polls Redis fast while someone looks and slowly while nobody does."""

from __future__ import annotations

import fakeredis

from framepool.settings import Settings
from monitoring.alerts import AlertEngine
from monitoring.app import MonitorState
from monitoring.cluster import ClusterReader


def state(**kw: float) -> MonitorState:
    client = fakeredis.FakeRedis()
    s = Settings(redis_url="redis://fake:6379/0", **kw)
    return MonitorState(s, ClusterReader(client, s), AlertEngine(client, s))


def test_idle_until_a_read_then_fast_for_two_polls() -> None:
    st = state(monitor_poll_interval_seconds=1.0, monitor_idle_poll_interval_seconds=5.0)
    assert st.poll_delay() == 5.0  # nobody has looked yet
    st.current()  # an API or /metrics read (the first one reads Redis itself)
    assert st.snapshot is not None and st.polls == 1
    assert st.poll_delay() == 1.0
    st.demand_at -= 2.5  # the read was two and a half polls ago
    assert st.poll_delay() == 5.0


def test_a_websocket_client_keeps_it_fast() -> None:
    st = state(monitor_poll_interval_seconds=0.5, monitor_idle_poll_interval_seconds=5.0)
    st.hub.clients.add(object())  # type: ignore[arg-type]
    assert st.poll_delay() == 0.5


def test_the_idle_interval_is_never_shorter_than_the_poll_interval() -> None:
    st = state(monitor_poll_interval_seconds=2.0, monitor_idle_poll_interval_seconds=0.5)
    assert st.poll_delay() == 2.0
