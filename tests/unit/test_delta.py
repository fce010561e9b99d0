"""Delta snapshots: a full state plus the deltas after it is exactly the state they were cut from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.ingest.events import EventBatch, hash_id
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner
from stream_learner.runtime.worker import Worker
from stream_learner.scoring.spec import FieldSpec
from stream_learner.snapshots import delta
from stream_learner.snapshots.chain import Fold, newest_state
from stream_learner.snapshots.format import Snapshot, SnapshotMeta, encode_payload
from stream_learner.snapshots.state import StateCopier, StateCopy, extract
from tests.learning_support import assert_same_tensors

WINDOW_MS = 60_000


def _settings(lr: dict[str, object] | None = None, delay: float = 0.0, **model: object) -> Settings:
    return Settings.model_validate(
        {
            "model": {"kind": "dnn", "user_buckets": 512, "item_buckets": 128, **model},
            "train": {"device": "cpu", "batch_size": 64, "deterministic": True},
            "lr": lr or {"policy": "constant"},
            "features": {"feedback_delay_seconds": delay},
        }
    )


def _window(rng: np.random.Generator, index: int, n: int = 300, users: int = 2000) -> Window:
    """A window touching a few hundred of the rows (ids are hashed into the buckets)."""
    u = rng.integers(0, users, n)
    i = rng.integers(0, 300, n)
    start = 1_700_000_000_000 + index * WINDOW_MS
    events = EventBatch(
        user=np.array([hash_id(f"u{x}") for x in u], dtype=np.int64),
        item=np.array([hash_id(f"i{x}") for x in i], dtype=np.int64),
        context=np.empty((n, 0), np.int64),
        label=(rng.random(n) < 0.3).astype(np.float32),
        timestamp_ms=np.sort(rng.integers(start, start + WINDOW_MS, n)).astype(np.int64),
        partition=np.zeros(n, np.int32),
        offset=np.arange(index * n, (index + 1) * n, dtype=np.int64),
        item_ids=np.array([f"i{x}" for x in i], dtype=object),
    )
    return Window(start, start + WINDOW_MS, events, {0: (index * n, (index + 1) * n - 1)}, "watermark")


def _run(learner: Learner, worker: Worker, windows: list[Window]) -> list[tuple[StateCopy, dict]]:
    """Train on each window through the worker thread; the copy after each, with the true state."""
    out = []
    with worker:
        for w in windows:
            worker.submit(w, snapshot=True)
            (result,) = worker.outputs(timeout=60)
            assert result.error is None, result.error
            assert result.state is not None
            out.append((result.state, learner.tensors()))
    return out


def _snapshot(copy: StateCopy, version: int, base: int | None) -> Snapshot:
    meta = SnapshotMeta("m", version, copy.kind, "{}", 0, 0, 0, 0, base_version=base)
    return Snapshot(meta, encode_payload(copy.tensors).tobytes())


def _assert_chain_is_exact(copies: list[tuple[StateCopy, dict]]) -> None:
    snapshots = [_snapshot(c, v, None if c.kind == "FULL" else v - 1) for v, (c, _) in enumerate(copies, 1)]
    for upto in range(1, len(snapshots) + 1):
        assert_same_tensors(newest_state(snapshots[:upto]), copies[upto - 1][1])


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "dnn"},
        {"kind": "logistic"},
        {"kind": "dnn", "table": "dynamic"},
        # slots unseen for two windows expire, and their rows change outside the trained rows
        {"kind": "dnn", "table": "dynamic", "expire_after_seconds": 2 * WINDOW_MS / 1000},
    ],
)
def test_full_plus_deltas_equals_the_state_exactly(model):
    learner = Learner(_settings(**model))
    _full_plus_deltas(learner)


def test_full_plus_deltas_equals_the_state_of_a_table_that_prunes():
    """A full dynamic table reclaims slots it gives to no new id in that window: their rows are
    reset outside the trained ones, and the next delta carries them."""
    learner = Learner(_settings(kind="fm", table="dynamic", user_buckets=256))
    _full_plus_deltas(learner)
    assert learner.features.stats()["user"].pruned > 0


def test_full_plus_deltas_equals_the_state_with_labels_pending():
    """With a feedback delay the pending labels change length from version to version: a delta
    carries them whole, of their new length."""
    learner = Learner(_settings(delay=WINDOW_MS / 1000 / 2, kind="fm"))
    lengths = {len(tensors["features.pending.label"]) for _, tensors in _full_plus_deltas(learner)}
    assert len(lengths) > 1 and min(lengths) > 0


def _full_plus_deltas(learner: Learner) -> list[tuple[StateCopy, dict]]:
    rng = np.random.default_rng(1)
    copies = _run(
        learner, Worker(learner, StateCopier(learner, full_every=4)), [_window(rng, k) for k in range(9)]
    )
    assert [c.kind for c, _ in copies] == ["FULL", "DELTA", "DELTA", "DELTA"] * 2 + ["FULL"]
    _assert_chain_is_exact(copies)
    return copies


def test_delta_first_cuts_a_due_full_copy_as_a_delta_too():
    """With ``delta_first`` every copy after the first is a delta, and the one a full is due at
    carries the whole state as well: the chain through the deltas and the full agree exactly."""
    learner = Learner(_settings())
    rng = np.random.default_rng(4)
    copier = StateCopier(learner, full_every=3, delta_first=True)
    copies = _run(learner, Worker(learner, copier), [_window(rng, k) for k in range(7)])
    assert [c.kind for c, _ in copies] == ["FULL"] + ["DELTA"] * 6
    assert [c.full is not None for c, _ in copies] == [False, False, False, True, False, False, True]
    _assert_chain_is_exact(copies)  # the deltas alone continue the first full
    for copy, truth in copies:
        if copy.full is not None:  # and the whole state is the state after that window
            assert_same_tensors(copy.full, truth)


def test_the_optimiser_state_forgotten_after_a_drift_reaches_the_next_delta():
    """After a drift the learner scales the table optimiser's state of the rows it trains next; those
    changes must reach the next delta, or a restore from full + deltas is not exact."""
    learner = Learner(_settings())
    rng = np.random.default_rng(1)
    copies = []
    with Worker(learner, StateCopier(learner, full_every=10)) as worker:
        for k in range(4):
            if k == 2:  # between windows (the worker thread is idle): a drift was detected
                learner.drift.arm()
            worker.submit(_window(rng, k), snapshot=True)
            (result,) = worker.outputs(timeout=60)
            assert result.error is None and result.state is not None
            copies.append((result.state, learner.tensors()))
    assert not learner.drift.pending  # the forgetting was applied
    _assert_chain_is_exact(copies)


def test_a_delta_carries_only_the_touched_rows():
    learner = Learner(_settings(user_buckets=8192))
    rng = np.random.default_rng(2)
    windows = [_window(rng, 0), _window(rng, 1, n=50, users=40)]
    (full, _), (small, _) = _run(learner, Worker(learner, StateCopier(learner, full_every=10)), windows)
    rows = small.tensors["delta.rows/user"]
    expected = np.unique([hash_id(f"u{x}") % 8192 for x in range(40)]).size
    assert 0 < len(rows) <= expected
    assert small.tensors["delta.slice/user/model.embeddings.user.weight"].shape == (len(rows), 16)
    assert "model.embeddings.user.weight" not in small.tensors
    assert "model.mlp.0.weight" in small.tensors  # dense weights travel whole
    assert encode_payload(small.tensors).size < encode_payload(full.tensors).size / 5


def test_after_a_restore_the_next_copy_continues_the_chain():
    """A worker told it stands 2 deltas after a full (K=3) makes a full copy next, then deltas."""
    learner = Learner(_settings())
    rng = np.random.default_rng(3)
    layout = {n: tuple(t.shape) for n, t in learner.tensors().items()}
    worker = Worker(learner, StateCopier(learner, full_every=3, since_full=2, layout=layout))
    kinds = [c.kind for c, _ in _run(learner, worker, [_window(rng, k) for k in range(4)])]
    assert kinds == ["FULL", "DELTA", "DELTA", "FULL"]
    worker = Worker(learner, StateCopier(learner, full_every=3, since_full=0, layout=layout))
    assert [c.kind for c, _ in _run(learner, worker, [_window(rng, 9)])] == ["DELTA"]


def test_a_tensor_new_since_the_base_travels_whole():
    fields = (FieldSpec("user", 6),)
    tensors = {
        "model.embeddings.user.weight": torch.arange(12.0).reshape(6, 2),
        "optim.sparse.x": torch.ones(6),
    }
    touched = {"embeddings.user": torch.tensor([1, 4])}
    out = extract(tensors, touched, fields, layout={"model.embeddings.user.weight": (6, 2)})
    assert out.keys() == {
        "delta.rows/user",
        "delta.slice/user/model.embeddings.user.weight",
        "optim.sparse.x",
    }
    base = {"model.embeddings.user.weight": np.zeros((6, 2), np.float32)}
    delta.apply(base, {k: v.numpy() for k, v in out.items()})
    weights = base["model.embeddings.user.weight"]
    assert np.array_equal(weights[[1, 4]], tensors["model.embeddings.user.weight"][[1, 4]].numpy())
    assert np.array_equal(weights[[0, 2, 3, 5]], np.zeros((4, 2)))
    assert np.array_equal(base["optim.sparse.x"], np.ones(6))


def test_a_delta_writes_into_the_arrays_of_the_base():
    """Whoever shares the base's arrays (the model served) sees a delta's rows and whole tensors."""
    weights, dense = np.zeros((6, 3), np.float32), np.zeros(2, np.float32)
    base = {"w": weights, "dense": dense}
    delta.apply(base, _good_delta())
    assert base["w"] is weights and base["dense"] is dense
    assert weights[[0, 2]].tolist() == [[1.0] * 3] * 2 and dense.tolist() == [5.0, 5.0]


def test_only_the_pending_labels_may_change_length():
    base = {"features.pending.label": np.zeros(3), "dense": np.zeros(2, np.float32)}
    delta.apply(base, {"features.pending.label": np.ones(5)})
    assert np.array_equal(base["features.pending.label"], np.ones(5))
    with pytest.raises(SnapshotError):
        delta.apply(base, {"features.pending.label": np.ones(5, np.float32)})
    with pytest.raises(SnapshotError):
        delta.apply(base, {"dense": np.zeros(3, np.float32)})


def _good_delta() -> dict[str, np.ndarray]:
    return {
        "delta.rows/user": np.array([0, 2]),
        "delta.slice/user/w": np.ones((2, 3), np.float32),
        "dense": np.full(2, 5.0, np.float32),
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"delta.rows/user": np.array([0, 6])},  # row outside the table
        {"delta.rows/user": np.array([-1, 2])},
        {"delta.rows/user": np.array([0.0, 2.0])},  # not integer rows
        {"delta.slice/user/w": np.ones((2, 4), np.float32)},  # wrong row width
        {"delta.slice/user/w": np.ones((3, 3), np.float32)},  # more rows than indices
        {"delta.slice/user/missing": np.ones((2, 3), np.float32)},  # nothing to apply it to
        {"delta.slice/item/w": np.ones((2, 3), np.float32)},  # no row index for the field
        {"dense": np.zeros(3, np.float32)},  # a whole tensor of another shape
        {"delta.slice/user/w": np.ones((2, 3))},  # float64
    ],
)
def test_a_bad_delta_is_refused_and_changes_nothing(bad):
    base = {"w": np.zeros((6, 3), np.float32), "dense": np.zeros(2, np.float32)}
    before = {k: v.copy() for k, v in base.items()}
    with pytest.raises(SnapshotError) as err:
        delta.apply(base, {**_good_delta(), **bad})
    assert err.value.reason == "bad_delta"
    assert all(np.array_equal(base[k], before[k]) for k in before)


def test_replay_refuses_a_gap_and_a_chain_without_a_full_snapshot():
    full = Snapshot(
        SnapshotMeta("m", 1, "FULL", "{}", 0, 0, 0, 0), encode_payload({"dense": np.zeros(2)}).tobytes()
    )
    payload = encode_payload({"dense": np.ones(2)}).tobytes()
    later = Snapshot(SnapshotMeta("m", 3, "DELTA", "{}", 0, 0, 0, 0, base_version=2), payload)
    follows = Snapshot(SnapshotMeta("m", 2, "DELTA", "{}", 0, 0, 0, 0, base_version=1), payload)
    assert np.array_equal(newest_state([full, follows])["dense"], np.ones(2))
    with pytest.raises(SnapshotError) as err:
        newest_state([full, later])
    assert err.value.reason == "gap"
    with pytest.raises(SnapshotError):
        newest_state([later])


def test_a_fold_that_keeps_part_of_the_state_checks_the_rest_as_the_learner_does():
    """Serving keeps the model and the features: the optimiser state is checked as the learner
    checks it (a delta whose optimiser rows do not fit is refused by both), then held as a
    placeholder of its dtype and shape that holds no memory."""
    learner = Learner(_settings(kind="fm"))
    rng = np.random.default_rng(5)
    worker = Worker(learner, StateCopier(learner, full_every=4))
    copies = _run(learner, worker, [_window(rng, k) for k in range(3)])
    snapshots = [_snapshot(c, v, None if c.kind == "FULL" else v - 1) for v, (c, _) in enumerate(copies, 1)]

    def keep(name: str) -> bool:
        return not name.startswith("optim.")

    fold = Fold(snapshots[0], keep)
    fold.apply_all(snapshots[1:])
    whole = newest_state(snapshots)
    assert fold.tensors.keys() == whole.keys() and any(not keep(n) for n in whole)
    for name, tensor in fold.tensors.items():
        assert (tensor.dtype, tensor.shape) == (whole[name].dtype, whole[name].shape), name
        if keep(name):
            assert np.array_equal(tensor, whole[name]), name
        else:
            assert not tensor.flags.writeable and not any(tensor.strides), name  # no memory of its own
    assert fold.copy().tensors["model.bias"] is not fold.tensors["model.bias"]

    cut = dict(copies[2][0].tensors)
    optim = next(k for k in cut if k.startswith("delta.slice/") and "/optim." in k)
    cut[optim] = cut[optim].astype(np.float64)
    bad = Snapshot(
        SnapshotMeta("m", 4, "DELTA", "{}", 0, 0, 0, 0, base_version=3), encode_payload(cut).tobytes()
    )
    for fold in (Fold(snapshots[0]), Fold(snapshots[0], keep)):
        fold.apply_all(snapshots[1:])
        with pytest.raises(SnapshotError) as err:
            fold.apply(bad)
        assert err.value.reason == "bad_delta" and fold.meta.version == 3
