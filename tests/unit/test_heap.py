"""framepool.heap: the startup heap is frozen out of the collector's way."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from framepool.heap import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_lives_at_startup_is_frozen_and_what_comes_later_is_not(unfrozen: None) -> None:
    before = [[i] for i in range(1000)]  # tracked containers, alive at "startup"
    freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen >= len(before)
    after = [[i] for i in range(1000)]
    assert gc.get_freeze_count() == frozen  # new objects stay collectable
    assert after and before
