"""The worker's garbage-collector settings (service/server.py)."""

import gc
from collections.abc import Iterator

import pytest

from service.server import YOUNG_COLLECTION_THRESHOLD, tune_garbage_collector


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
    tune_garbage_collector()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, middle, oldest)
