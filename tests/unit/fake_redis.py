"""fakeredis fixtures shared by the cluster reader's test modules (test_cluster.py,
test_cluster_queues.py): an in-memory Redis server per test and a client on it."""

from __future__ import annotations

import fakeredis
import pytest


@pytest.fixture()
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture()
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)
