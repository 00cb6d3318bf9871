"""Worker start-up hooks that tune the process."""

from __future__ import annotations

import gc

from lewis_tasks.infra.signals import tune_gc


def test_tune_gc_sets_the_young_threshold_and_freezes_start_up_objects() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        tune_gc(12_345)
        young, middle, old = gc.get_threshold()
        assert young == 12_345 and (middle, old) == before[1:]
        assert gc.get_freeze_count() > 0  # what start-up built is out of every collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
