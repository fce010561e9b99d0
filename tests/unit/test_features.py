"""Ids to rows: hashed buckets, and the collisionless dynamic table (admission, expiry, reuse)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_learner.config import FeatureSettings, ModelSettings
from stream_learner.ingest.events import MISSING_KEY, hash_id
from stream_learner.learning.features import FREE, OOV_ROW, DynamicField, FeatureMapper, HashedField
from stream_learner.learning.models import FieldSpec, ModelSpec
from stream_learner.learning.realtime import LABELS_MS, PENDING_ARRAYS
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

DAY_MS = 86_400_000


def keys(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int64)


def place(table: DynamicField, ids: np.ndarray, time_ms: int) -> np.ndarray:
    plan = table.place(ids, np.full(len(ids), time_ms, np.int64))
    table.commit(plan)
    return plan.rows


@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=1, max_size=50), st.integers(1, 1000))
def test_hashed_rows_are_stable_and_in_range(ids: list[int], rows: int) -> None:
    field = HashedField("user", rows)
    a = field.lookup(np.array(ids, dtype=np.int64))
    assert ((a >= 0) & (a < rows)).all()
    np.testing.assert_array_equal(a, field.lookup(np.array(ids, dtype=np.int64)))
    np.testing.assert_array_equal(a, np.array([i % (1 << 64) % rows for i in ids]))


def test_dynamic_table_gives_each_id_its_own_row() -> None:
    table = DynamicField("user", 100)
    ids = keys(*range(10, 60))
    rows = place(table, ids, 0)
    assert len(set(rows.tolist())) == 50 and OOV_ROW not in rows
    np.testing.assert_array_equal(table.lookup(ids), rows)
    np.testing.assert_array_equal(place(table, ids[::-1], 1), rows[::-1])  # the same rows next time
    assert table.stats.in_use == 50 and table.stats.admitted == 50


def test_ids_are_admitted_after_n_sightings_and_share_row_0_before() -> None:
    table = DynamicField("user", 10, admit_after=3)
    assert list(place(table, keys(7, 8), 0)) == [OOV_ROW, OOV_ROW]
    assert list(place(table, keys(7), 1)) == [OOV_ROW]
    rows = place(table, keys(7, 8), 2)  # 7: third sighting; 8: second
    assert rows[0] != OOV_ROW and rows[1] == OOV_ROW
    assert list(table.lookup(keys(7, 8))) == [rows[0], OOV_ROW]
    assert table.stats.admitted == 1 and table.stats.in_use == 2  # 8 holds a slot while it is counted
    # Sightings within one window count: three at once admit an id for the whole window.
    assert OOV_ROW not in place(table, keys(9, 9, 9), 3)


def test_unseen_rows_expire_and_are_reused_for_new_ids() -> None:
    table = DynamicField("item", 4, expire_after_ms=DAY_MS)  # 3 slots besides row 0
    old = place(table, keys(1, 2, 3), 0)
    assert list(place(table, keys(4), 1)) == [OOV_ROW]  # full: the new id waits in row 0
    assert table.stats.unplaced == 1
    place(table, keys(1), DAY_MS // 2)  # id 1 stays fresh
    plan = table.place(keys(5, 6), np.full(2, DAY_MS + 10, np.int64))
    assert sorted(plan.expired.tolist()) == sorted(old[1:].tolist())  # 2 and 3 expire, 1 does not
    assert sorted(plan.new_slots.tolist()) == sorted(old[1:].tolist())  # and their slots are reused
    assert table.lookup(keys(2)).tolist() == [old[1]]  # nothing changes before commit
    table.commit(plan)
    assert table.lookup(keys(2, 3)).tolist() == [OOV_ROW, OOV_ROW]
    assert sorted(table.lookup(keys(5, 6)).tolist()) == sorted(old[1:].tolist())
    assert table.stats.expired == 2 and table.stats.in_use == 3


def test_state_round_trips_and_serving_lookup_never_admits() -> None:
    settings = ModelSettings(table="dynamic", user_buckets=64, item_buckets=32, context_fields=["device"])
    mapper = FeatureMapper.from_settings(settings, FeatureSettings())
    batch = SyntheticStream(SyntheticConfig(users=40, items=20)).batch(300, 0, 1)
    events = batch.events(["device"])
    mapper.commit(mapper.place(events))
    state = {k: v.copy() for k, v in mapper.state().items()}
    sums = ("sums", LABELS_MS)
    assert set(state) == {
        f"features.{f}.{k}" for f in ("user", "item") for k in ("keys", "last_seen_ms", "pending", *sums)
    } | {f"features.global.{k}" for k in sums} | {f"features.pending.{k}" for k in PENDING_ARRAYS}
    assert all(len(v) == 64 for k, v in state.items() if ".user." in k)

    serving = FeatureMapper.from_spec(ModelSpec("fm", mapper.specs(), extra=mapper.spec_extra()), state)
    np.testing.assert_array_equal(serving.rows(events), mapper.rows(events))
    by_ids = serving.rows_for_ids(
        list(batch.user_id), list(batch.item_id), {"device": list(batch.context["device"])}
    )
    np.testing.assert_array_equal(by_ids, mapper.rows(events))
    unknown = serving.rows_for_ids(["nobody"], ["nothing"])
    assert unknown[0, :2].tolist() == [OOV_ROW, OOV_ROW]
    assert unknown[0, 2] == HashedField("ctx.device", 4096).lookup(keys(MISSING_KEY))[0]
    for k, v in serving.state().items():
        np.testing.assert_array_equal(v, state[k])  # lookups changed nothing


def test_specs_name_each_field_with_its_rows_and_table() -> None:
    settings = ModelSettings(
        table="dynamic",
        user_buckets=9,
        item_buckets=8,
        context_fields=["a", "b"],
        context_field_buckets={"b": 5},
    )
    assert FeatureMapper.from_settings(settings, FeatureSettings()).specs() == (
        FieldSpec("user", 9, "dynamic"),
        FieldSpec("item", 8, "dynamic"),
        FieldSpec("ctx.a", 4096),
        FieldSpec("ctx.b", 5),
    )


def test_bad_state_is_refused_with_the_name() -> None:
    spec = ModelSpec("fm", (FieldSpec("user", 8, "dynamic"), FieldSpec("item", 4)))
    with pytest.raises(ValueError, match=r"missing feature state \['features.user.keys'"):
        FeatureMapper.from_spec(spec, {})
    state = {"features.user.keys": np.zeros(9, np.int64), "features.user.last_seen_ms": np.full(9, FREE)}
    state["features.user.pending"] = np.zeros(9, np.int32)
    with pytest.raises(ValueError, match=r"features.user.keys has shape \(9,\)"):
        FeatureMapper.from_spec(spec, state)


def test_rows_for_ids_hash_like_the_codec() -> None:
    mapper = FeatureMapper.from_settings(
        ModelSettings(user_buckets=1000, item_buckets=100), FeatureSettings()
    )
    rows = mapper.rows_for_ids(["u1", "u2"], ["i1", "i1"])
    assert rows[:, 0].tolist() == [hash_id("u1") % (1 << 64) % 1000, hash_id("u2") % (1 << 64) % 1000]
    with pytest.raises(ValueError, match="2 user ids for 1 item ids"):
        mapper.rows_for_ids(["a", "b"], ["c"])
