"""Pruning during training: a full dynamic table reclaims the rows worth least, never exceeds its
slots, resets what it frees, and a pruned id scores as an unseen one at serving."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch, hash_id
from stream_learner.ingest.windowing import Window
from stream_learner.learning.features import FREE, OOV_ROW, DynamicField
from stream_learner.learning.learner import Learner
from stream_learner.learning.pruning import Pruning
from stream_learner.learning.realtime import EVENTS, INPUTS, Formula
from stream_learner.metrics import CollectorRegistry, Metrics
from stream_learner.serving.model import ServableModel
from tests.learning_support import small_settings

SLOTS = 16  # besides row 0


def keys(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int64)


def commit(table: DynamicField, ids: np.ndarray, time_ms: int | np.ndarray, **kw: Any) -> Any:
    times = np.broadcast_to(np.asarray(time_ms, np.int64), ids.shape).copy()
    plan = table.place(ids, times, **kw)
    table.commit(plan)
    return plan


def full_table(pruning: Pruning) -> DynamicField:
    """Slots 1..16 held by ids 1..16, id k last seen at time k."""
    table = DynamicField("user", SLOTS + 1, pruning=pruning)
    for k in range(1, SLOTS + 1):
        commit(table, keys(k), k)
    assert table.stats.in_use == SLOTS
    return table


def test_below_the_ceiling_nothing_is_pruned() -> None:
    table = DynamicField("user", SLOTS + 1)
    for k in range(SLOTS):
        plan = commit(table, keys(k + 100), k * 86_400_000)  # a day apart: no age-based expiry
        assert len(plan.pruned) == 0 and len(plan.expired) == 0
    assert table.stats.in_use == SLOTS and table.stats.pruned == 0


def test_a_full_table_reclaims_the_least_recent_rows_and_keeps_the_surplus_free() -> None:
    table = full_table(Pruning(fraction=0.25))  # at least 4 of 17 rows at once
    slot = {k: int(table.lookup(keys(k))[0]) for k in range(1, SLOTS + 1)}
    plan = commit(table, keys(1, 99), 100)  # 1 is seen again: it stays
    assert sorted(plan.pruned.tolist()) == sorted(slot[k] for k in (2, 3, 4, 5))
    assert plan.new_slots.tolist() == [min(slot[k] for k in (2, 3, 4, 5))]
    assert table.lookup(keys(2, 3, 4, 5)).tolist() == [OOV_ROW] * 4  # gone: they score as unseen
    assert table.lookup(keys(1))[0] == slot[1] and table.lookup(keys(99))[0] != OOV_ROW
    assert table.stats.in_use == SLOTS - 3 and table.stats.pruned == 4
    assert (table.last_seen_ms == FREE).sum() == 1 + 3  # row 0 and the three slots left free
    assert 2 not in table.keys  # the state a snapshot carries forgets them


@pytest.mark.parametrize("by", ["least_seen", "smallest_norm"])
def test_other_policies_reclaim_the_rows_of_least_worth_ties_to_the_lowest_slot(by: str) -> None:
    table = full_table(Pruning(by, fraction=0.01))  # type: ignore[arg-type]
    worth = np.zeros(SLOTS + 1)
    worth[1:] = [5, 1, 7, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0.5, 9]  # slot 15 least, then 2 and 4
    plan = commit(table, keys(101, 102, 103), 100, worth=lambda: worth)
    assert plan.pruned.tolist() == [2, 4, 15]
    assert sorted(plan.new_slots.tolist()) == [2, 4, 15]


def test_rows_seen_within_the_guard_are_never_reclaimed() -> None:
    table = full_table(Pruning(fraction=0.01, guard_ms=10))
    plan = commit(table, keys(200, 201, 202, 203, 204), 15)  # ids seen at 1..3 are older than 15 - 11
    assert len(plan.pruned) == 3 and plan.unplaced == 2
    assert table.lookup(keys(1, 2, 3)).tolist() == [OOV_ROW] * 3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=30), min_size=1, max_size=25),
    st.sampled_from([0.01, 0.2, 0.5]),
)
def test_the_ceiling_holds_and_pruning_frees_the_least_recent_first(
    windows: list[list[int]], fraction: float
) -> None:
    rows = 9
    table = DynamicField("item", rows, pruning=Pruning(fraction=fraction))
    for t, ids in enumerate(windows):
        before = table.last_seen_ms.copy()
        window = keys(*ids)
        plan = commit(table, window, 10 * (t + 1))
        assert table.stats.in_use <= rows - 1
        assert len(set(table.keys[table.last_seen_ms != FREE].tolist())) == table.stats.in_use
        if len(plan.pruned):
            held = np.isin(np.arange(rows), plan.slots)  # ids of this window keep their slots
            kept = (before != FREE) & ~held & ~np.isin(np.arange(rows), plan.pruned)
            kept[OOV_ROW] = False
            assert before[plan.pruned].max() <= before[kept].min(initial=np.iinfo(np.int64).max)
        # an id the table holds maps to its own slot; one it does not hold to row 0
        held = np.flatnonzero(table.last_seen_ms != FREE)
        np.testing.assert_array_equal(table.lookup(table.keys[held]), held)
        for k in set(ids):
            slot = table.lookup(keys(k))[0]
            assert slot == OOV_ROW or table.keys[slot] == k
        gone = [k for k in range(61) if k not in table.keys[held]]
        assert (table.lookup(keys(*gone)) == OOV_ROW).all()  # the index forgot every key it freed


# -- the learner, its snapshot and serving --------------------------------------------------------
def pruning_settings(**model: Any) -> Settings:
    return small_settings(
        model={"kind": "fm", "table": "dynamic", "user_buckets": SLOTS + 1, "context_fields": [], **model}
    )


def window(w: int, users: list[str], items: list[str]) -> Window:
    n = len(users)
    times = np.arange(w * 1000, w * 1000 + n, dtype=np.int64)
    batch = EventBatch(
        user=np.array([hash_id(u) for u in users], np.int64),
        item=np.array([hash_id(i) for i in items], np.int64),
        context=np.zeros((n, 0), np.int64),
        label=(np.arange(n) % 3 == 0).astype(np.float32),
        timestamp_ms=times,
        partition=np.zeros(n, np.int32),
        offset=np.arange(w * 1000, w * 1000 + n, dtype=np.int64),
        item_ids=np.array(items, dtype=object),
    )
    return Window(w * 1000, (w + 1) * 1000, batch, {0: (w * 1000, w * 1000 + n - 1)}, "count")


def user_windows(learner: Learner) -> list[str]:
    """Users u0..u15 fill the table over four windows (u0 first, u15 last, each with events on
    several items); then one new user, u99, makes it prune."""
    items = [f"i{k}" for k in range(6)]
    for w in range(4):
        users = [f"u{u}" for u in range(4 * w, 4 * w + 4) for _ in range(6)]
        learner.process(window(w, users, items * 4))
    learner.process(window(4, ["u99"] * 6 + ["u15"] * 6, items * 2))
    return [f"u{u}" for u in range(16)]


def test_a_pruned_row_is_free_and_reset_in_the_next_full_snapshot_and_scores_as_unseen() -> None:
    learner = Learner(pruning_settings(prune_fraction=0.25))  # at least 4 of 17 rows
    users = user_windows(learner)
    table = learner.features.fields[0]
    assert isinstance(table, DynamicField) and table.stats.pruned == 4
    state = {k: v.numpy() for k, v in learner.tensors().items()}  # what a full snapshot carries
    pruned = [u for u in users if hash_id(u) not in state["features.user.keys"]]
    assert pruned == ["u0", "u1", "u2", "u3"]  # the four seen least recently
    free = np.flatnonzero(state["features.user.last_seen_ms"] == FREE)
    free = free[free != OOV_ROW]
    assert len(free) == 3  # four reclaimed, one given to u99
    assert (state["features.user.keys"][free] == 0).all() and (
        state["features.user.pending"][free] == 0
    ).all()
    # reset: no optimiser state, no real-time sums, the linear weight at its initial zero
    for name, value in state.items():
        if name.startswith("optim.sparse.") and ".user." in name and value.ndim:
            assert (value[free] == 0).all(), name
    assert (state["features.user.sums"][free] == 0).all()
    assert (state["model.linear.weights.user.weight"][free] == 0).all()

    served = ServableModel(learner.spec, state)
    items = [f"i{k}" for k in range(6)]
    at = 10_000
    for user in pruned:
        np.testing.assert_array_equal(
            served.score(user, items, at_ms=at), served.score("never", items, at_ms=at)
        )
    assert not np.array_equal(served.score("u15", items, at_ms=at), served.score("never", items, at_ms=at))


def test_least_seen_prunes_the_rarest_ids() -> None:
    learner = Learner(pruning_settings(prune_by="least_seen", prune_fraction=0.01))
    users = [f"u{u}" for u in range(16) for _ in range(1 + u % 4)]  # u0, u4, u8, u12: seen once
    learner.process(window(0, users, [f"i{k % 6}" for k in range(len(users))]))
    table = learner.features.fields[0]
    assert isinstance(table, DynamicField)
    rarest = min((int(table.lookup(keys(hash_id(f"u{u}")))[0]), u) for u in (0, 4, 8, 12))
    learner.process(window(1, ["new"] * 3, ["i0", "i1", "i2"]))
    gone = [u for u in range(16) if hash_id(f"u{u}") not in table.keys]
    assert gone == [rarest[1]]  # of the rarest, the lowest slot
    slot = int(table.lookup(keys(hash_id("new")))[0])
    assert slot == rarest[0]
    realtime = learner.features.realtime  # the reclaimed row's counts started again from zero
    assert realtime is not None and realtime.sums[0][slot, EVENTS] == 3


def test_a_restored_learner_prunes_as_the_uninterrupted_one() -> None:
    """Exactly-once: the choice depends only on what a snapshot carries."""
    settings = pruning_settings(prune_fraction=0.1)
    items = [f"i{k}" for k in range(6)]
    plan = [[f"u{(7 * w + k) % 40}" for k in range(12)] for w in range(8)]
    whole = Learner(settings)
    for w, users in enumerate(plan):
        whole.process(window(w, users, items * 2))
    first = Learner(settings)
    for w, users in enumerate(plan[:4]):
        first.process(window(w, users, items * 2))
    resumed = Learner(settings)
    resumed.restore({k: v.numpy() for k, v in first.tensors().items()}, first.state())
    for w, users in enumerate(plan[4:], start=4):
        resumed.process(window(w, users, items * 2))
    assert whole.features.stats()["user"].pruned > 0
    a, b = whole.tensors(), resumed.tensors()
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name].numpy(), b[name].numpy()), name
    assert whole.state()["tables"] == resumed.state()["tables"]


def test_least_seen_needs_the_counts() -> None:
    with pytest.raises(ValueError, match=r"model\.prune_by"):
        pruning_settings(prune_by="least_seen", count_features=False)


def test_a_new_id_counts_in_its_own_row_from_its_first_event_when_its_window_is_scored() -> None:
    """Not in row 0 with every other new id: a dynamic table's window is scored with the real-time
    inputs of the rows it is trained with, as a hashed table's is."""
    learner = Learner(pruning_settings())
    users = ["a", "b", "a", "b", "a", "c"]
    learner.process(window(0, users, ["i0"] * len(users)))
    assert learner.lesson is not None and learner.lesson.scored_inputs is not None
    activity = learner.lesson.scored_inputs[:, INPUTS.index("activity")]  # the user's, first
    expected = np.log1p([0, 0, 1, 1, 2, 0]) / Formula().activity_scale
    np.testing.assert_allclose(activity, expected, rtol=1e-6)


def test_the_rows_pruned_are_counted_in_the_metrics() -> None:
    learner = Learner(pruning_settings(prune_fraction=0.25))
    metrics = Metrics(CollectorRegistry())

    def pruned() -> float | None:
        value = metrics.registry.get_sample_value
        return value("stream_learner_feature_rows_pruned_total", {"field": "user"})

    items = [f"i{k}" for k in range(6)]
    for w in range(4):  # as user_windows: u0..u15 fill the table, then u99 makes it prune
        users = [f"u{u}" for u in range(4 * w, 4 * w + 4) for _ in range(6)]
        metrics.record_tables(learner.process(window(w, users, items * 4)).tables)
    assert pruned() == 0
    metrics.record_tables(learner.process(window(4, ["u99"] * 6 + ["u15"] * 6, items * 2)).tables)
    assert pruned() == 4
