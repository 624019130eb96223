"""The worker's garbage-collector settings (service/server.py)."""

import gc
from collections.abc import Iterator

import pytest

from service.server import tune_garbage_collector
from service.settings import ServerSettings


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_the_startup_heap_is_frozen_and_young_collections_are_rarer() -> None:
    _, middle, oldest = gc.get_threshold()
    kept = [object() for _ in range(10)]  # stands for what the worker built before it was ready
    young = ServerSettings().gc_young_threshold
    tune_garbage_collector(young)
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (young, middle, oldest)
    assert young > 700  # rarer than CPython's default
