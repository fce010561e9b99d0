import gc

from stream_learner.runtime import heap


def test_settle_takes_what_is_alive_out_of_later_collections_until_unfrozen():
    kept: list[object] = [[]]  # a container: tracked by the collector
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # frozen: no collection traverses it
        later: list[object] = []
        assert any(o is later for o in gc.get_objects())  # what comes after is collected as before
    finally:
        gc.unfreeze()  # what the exit hook does
    assert any(o is kept for o in gc.get_objects())
