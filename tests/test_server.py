"""The worker's garbage-collector settings (service/server.py)."""

import gc
from collections.abc import Iterator

import pytest

from service.server import tune_garbage_collector
from service.settings import ServerSettings


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_the_startup_heap_is_frozen_and_young_collections_are_rarer() -> None:
    _, middle, oldest = gc.get_threshold()
    # Stands for what the worker built before it was ready (lists: tracked by the collector).
    kept = [[index] for index in range(10)]
    assert gc.get_freeze_count() == 0
    young = ServerSettings().gc_young_threshold
    tune_garbage_collector(young)
    # Frozen objects leave the generations the collector walks.
    walked = {id(tracked) for tracked in gc.get_objects()}
    assert not any(id(startup) in walked for startup in kept)
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (young, middle, oldest)
    assert young > 700  # rarer than CPython's default
