"""The learner's window step: guards, holdout, dynamic tables end to end, metrics, warm start."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from safetensors.torch import save_file

from stream_learner.errors import WarmStartError
from stream_learner.learning.learner import Learner
from stream_learner.learning.rates import LRUpdate
from stream_learner.learning.realtime import EVENTS
from stream_learner.learning.trainer import StepResult
from stream_learner.metrics import Metrics
from stream_learner.snapshots.warmstart import load_pretrained
from tests.learning_support import assert_same_tensors, small_settings, windows


def flipped(window):  # the same events with every label inverted: a poisoned window
    return replace(window, events=replace(window.events, label=1 - window.events.label))


def test_a_loss_spike_is_not_applied_until_it_lasts() -> None:
    learner = Learner(small_settings(guard={"loss_spike_factor": 1.3, "max_consecutive_skips": 2}))
    ws = list(windows(10))
    for w in ws[:6]:
        assert learner.process(w).skipped is None
    before, state = learner.tensors(), learner.state()
    for w in ws[6:8]:
        result = learner.process(flipped(w))
        assert result.skipped == "loss_spike" and result.step is None
    assert_same_tensors(model_of(learner.tensors()), model_of(before))
    assert (learner.tensors()["features.user.sums"] - before["features.user.sums"])[
        :, EVENTS
    ].sum() == 2 * len(ws[6])
    assert state["events_trained"] == learner.state()["events_trained"]
    result = learner.process(flipped(ws[8]))  # the third in a row: the stream has changed; accept it
    assert result.skipped is None and result.step is not None and result.step.applied


def model_of(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights and optimiser state: not the real-time features, which count every window handled."""
    return {k: v for k, v in tensors.items() if not k.startswith("features.")}


def test_non_finite_windows_change_the_model_in_nothing() -> None:
    learner = Learner(small_settings())
    ws = list(windows(3))
    learner.process(ws[0])
    before = learner.tensors()
    bad = ws[1].events.label.copy()
    bad[5] = np.nan
    result = learner.process(replace(ws[1], events=replace(ws[1].events, label=bad)))
    assert result.skipped == "non_finite" and result.step is None
    assert_same_tensors(model_of(learner.tensors()), model_of(before))  # the features count it


def test_holdout_keeps_the_newest_events_out_of_training() -> None:
    learner = Learner(small_settings(train={"holdout_fraction": 0.25}))
    ws = list(windows(2))
    result = learner.process(ws[0])
    assert result.evaluation.count == 1000  # prequential: the whole window, before training
    assert result.holdout is not None and result.holdout.count == 250
    assert learner.events_trained == 750
    touched = learner.trainer.take_touched()["embeddings.user"]
    trained_rows = set(learner.features.rows(ws[0].events.take(np.arange(750)))[:, 0].tolist())
    counted_rows = set(learner.features.rows(ws[0].events)[:, 0].tolist())  # real-time features: all
    assert trained_rows < set(touched.tolist()) == counted_rows
    assert (
        learner.features.realtime is not None and learner.features.realtime.sums[0][:, EVENTS].sum() == 1000
    )


def test_dynamic_tables_recycle_rows_and_export_their_counts() -> None:
    settings = small_settings(
        model={"table": "dynamic", "user_buckets": 40, "expire_after_seconds": 0.2, "kind": "fm"}
    )
    learner = Learner(settings)
    fresh = fresh_when_training(learner)
    metrics = Metrics(CollectorRegistry())
    ws = list(windows(4, size=500))  # 300 users in 39 slots, windows of 0.5 s, expiry 0.2 s (before pruning)
    results = [learner.process(w) for w in ws]
    for r in results:
        metrics.record_tables(r.tables)
    assert results[0].tables is not None
    first = results[0].tables["user"]
    assert first.in_use == 39 and first.admitted == 39 and first.unplaced > 0
    assert sum(r.tables["user"].expired for r in results) > 0  # rows unseen for 1 s were reused
    value = metrics.registry.get_sample_value
    assert value("stream_learner_feature_rows_in_use", {"field": "user"}) == 39
    assert value("stream_learner_feature_ids_admitted_total", {"field": "user"}) == sum(
        r.tables["user"].admitted for r in results
    )
    assert value("stream_learner_feature_rows_expired_total", {"field": "user"}) > 0
    # A recycled row starts over: the window that gives it to a new id resets it before training.
    assert any(
        len(f.get(0, ())) for f, r in zip(fresh[1:], results[1:], strict=True) if r.tables["user"].expired
    )
    tensors = learner.tensors()
    assert tensors["features.user.keys"].shape == (40,)
    assert set(learner.trainer.take_touched()) == set(learner.model.tables())


def test_a_refused_window_does_not_admit_ids() -> None:
    settings = small_settings(model={"table": "dynamic"}, guard={"loss_spike_factor": 1.3})
    learner = Learner(settings)
    ws = list(windows(8, seed=0)) + list(windows(1, seed=9))
    for w in ws[:6]:
        learner.process(w)
    tables = ("keys", "last_seen_ms", "pending")  # the dynamic tables' state (not the real-time sums)
    state = {k: v.clone() for k, v in learner.tensors().items() if k.endswith(tables)}
    assert learner.process(flipped(ws[-1])).skipped == "loss_spike"
    for k, v in state.items():
        assert torch.equal(learner.tensors()[k], v), k


def test_pretrained_tables_are_loaded_and_mismatches_named(tmp_path: Path) -> None:
    learner = Learner(small_settings(model={"kind": "fm"}))
    good = tmp_path / "good.safetensors"
    item = torch.randn(256, 4)
    save_file({"embeddings.item": item, "linear.weights.user": torch.ones(512, 1)}, str(good))
    assert load_pretrained(learner, good) == ["embeddings.item", "linear.weights.user"]
    assert torch.equal(learner.model.tables()["embeddings.item"].weight.detach(), item)

    shape = tmp_path / "shape.safetensors"
    save_file({"embeddings.item": torch.zeros(255, 4)}, str(shape))
    with pytest.raises(
        WarmStartError, match=r"embeddings.item has shape \(255, 4\), the model's has \(256, 4\)"
    ):
        load_pretrained(learner, shape)
    names = tmp_path / "names.safetensors"
    save_file({"embeddings.movie": torch.zeros(256, 4)}, str(names))
    with pytest.raises(WarmStartError, match=r"\['embeddings.movie'\] name no table of the model"):
        load_pretrained(learner, names)
    pickle = tmp_path / "pickle.pt"
    pickle.write_bytes(b"\x80\x04\x95not safetensors")
    with pytest.raises(WarmStartError, match="not a readable safetensors file"):
        load_pretrained(learner, pickle)


def test_pretrained_dynamic_tables_need_their_id_mapping(tmp_path: Path) -> None:
    trained = Learner(small_settings(model={"table": "dynamic"}))
    for w in windows(2):
        trained.process(w)
    tensors = trained.tensors()
    without = tmp_path / "without.safetensors"
    save_file({"embeddings.user": tensors["model.embeddings.user.weight"]}, str(without))
    fresh = Learner(small_settings(model={"table": "dynamic"}))
    with pytest.raises(WarmStartError, match="dynamic field user need all of"):
        load_pretrained(fresh, without)
    full = tmp_path / "with.safetensors"
    names = [f"features.user.{k}" for k in ("keys", "last_seen_ms", "pending")]  # the id mapping
    save_file(
        {"embeddings.user": tensors["model.embeddings.user.weight"], **{k: tensors[k] for k in names}},
        str(full),
    )
    load_pretrained(fresh, full)
    events = next(windows(1, seed=5)).events
    np.testing.assert_array_equal(fresh.features.rows(events)[:, 0], trained.features.rows(events)[:, 0])


class DriftOn:
    """A controller at a fixed rate that reports a drift on the ``at``-th window (from 1)."""

    def __init__(self, at: int, lr: float = 0.2) -> None:
        self.lr, self.at, self.seen = lr, at, 0

    def update(self, validation_loss: float, events: int = 1, variance: float | None = None) -> LRUpdate:
        self.seen += 1
        drift = self.seen == self.at
        return LRUpdate(self.lr, "drift (test)" if drift else None, drift)

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


def table_sums(learner: Learner) -> dict[str, torch.Tensor]:
    opt, tables = learner.trainer.sparse_opt, learner.trainer.tables
    return {name: opt.state[t.weight]["sum"].clone() for name, t in tables.items()}


def sums_when_training(learner: Learner) -> list[dict[str, torch.Tensor]]:
    """The table optimiser's sums as each later window starts training (and the rows it trains)."""
    seen: list[dict[str, torch.Tensor]] = []
    train = learner.trainer.train

    def spy(rows: np.ndarray, *args: object, **kwargs: object) -> StepResult:
        seen.append(table_sums(learner) | {"rows": torch.from_numpy(rows.copy())})
        return train(rows, *args, **kwargs)  # type: ignore[arg-type]

    learner.trainer.train = spy  # type: ignore[method-assign]
    return seen


def split_rows(learner: Learner, rows: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the rows of table ``name`` a window trains, and of the others."""
    hit = torch.zeros(learner.trainer.tables[name].weight.shape[0], dtype=torch.bool)
    hit[rows[:, learner.trainer.table_field[name]]] = True
    return hit, ~hit


def test_a_drift_forgets_the_accumulators_of_the_rows_its_window_trains_before_training() -> None:
    learner = Learner(small_settings(lr={"drift_forget": 0.25}))
    learner.controller = DriftOn(4)
    ws = list(windows(5))
    for w in ws[:3]:
        learner.process(w)
    before = table_sums(learner)
    seen = sums_when_training(learner)
    assert learner.process(ws[3]).lr.drift
    after = table_sums(learner)
    for name in before:
        hit, others = split_rows(learner, seen[0]["rows"], name)
        assert before[name][hit].any(), name
        assert torch.equal(seen[0][name][hit], before[name][hit] * 0.25), name  # already for this window
        assert torch.equal(after[name][others], before[name][others]), name  # not in a delta: unchanged
    learner.process(ws[4])
    for name in before:  # once only: the next window starts from what the drift's window left
        assert torch.equal(seen[1][name], after[name]), name


def test_a_drift_window_rolled_back_undoes_its_forgetting_and_keeps_it_pending() -> None:
    learner = Learner(small_settings(lr={"drift_forget": 0.3}))
    learner.controller = DriftOn(3)
    ws = list(windows(4))
    for w in ws[:2]:
        learner.process(w)
    before = table_sums(learner)
    train = learner.trainer.train
    learner.trainer.train = lambda *a, **k: StepResult(False, math.nan, 0, 0.0, "non_finite")  # type: ignore[method-assign]
    result = learner.process(ws[2])
    assert result.lr.drift and result.skipped == "non_finite"
    for name, after in table_sums(learner).items():
        assert torch.equal(after, before[name]), name  # exactly, not scaled back and forth
    assert learner.state()["forget_pending"]
    learner.trainer.train = train  # type: ignore[method-assign]
    seen = sums_when_training(learner)
    learner.process(ws[3])  # the next window trained forgets
    assert not learner.state()["forget_pending"]
    for name in before:
        hit, _ = split_rows(learner, seen[0]["rows"], name)
        assert torch.equal(seen[0][name][hit], before[name][hit] * 0.3), name


def fresh_when_training(learner: Learner) -> list[dict[int, np.ndarray]]:
    """The rows each later window resets before training (field index -> rows)."""
    seen: list[dict[int, np.ndarray]] = []
    train = learner.trainer.train

    def spy(*args: object, fresh: dict[int, np.ndarray] | None = None, **kwargs: object) -> StepResult:
        seen.append(dict(fresh or {}))
        return train(*args, fresh=fresh, **kwargs)  # type: ignore[arg-type]

    learner.trainer.train = spy  # type: ignore[method-assign]
    return seen


def with_item_flipped(learner: Learner, window):  # the labels of the window's most frequent item inverted
    rows = learner.features.rows(window.events)[:, 1]
    values, counts = np.unique(rows, return_counts=True)
    item = values[np.argmax(counts)]
    label = np.where(rows == item, 1 - window.events.label, window.events.label)
    return item, replace(window, events=replace(window.events, label=label.astype(window.events.label.dtype)))


@pytest.mark.parametrize("reset_z", [3.0, 0.0])
def test_a_drift_resets_the_rows_whose_own_loss_rose_and_no_others(reset_z: float) -> None:
    learner = Learner(small_settings(lr={"drift_reset_z": reset_z}))
    learner.controller = DriftOn(7)
    ws = list(windows(8, size=2_000))
    for w in ws[:6]:
        learner.process(w)
    seen = fresh_when_training(learner)
    item, changed = with_item_flipped(learner, ws[6])
    result = learner.process(changed)
    assert result.lr.drift
    if reset_z == 0:
        assert result.drift_resets is None and seen == [{}]
        return
    assert seen[0][1].tolist() == [item]
    # Not the users who saw it, unless their own loss rose on their other events too: their real-time
    # surprise input carries the item's flipped labels to their later events of the window.
    rows = learner.features.rows(changed.events)
    saw = set(rows[rows[:, 1] == item, 0].tolist())
    users = seen[0].get(0, np.empty(0)).tolist()
    assert set(users) <= saw and len(users) <= 0.05 * len(saw)
    assert result.drift_resets == {"item": 1} | ({"user": len(users)} if users else {})
    learner.process(ws[7])
    assert seen[1] == {}  # once per detected drift


def test_without_a_detected_drift_no_row_is_reset() -> None:
    learner = Learner(small_settings())
    learner.controller = DriftOn(100)
    ws = list(windows(7, size=2_000))
    for w in ws[:6]:
        learner.process(w)
    seen = fresh_when_training(learner)
    result = learner.process(with_item_flipped(learner, ws[6])[1])
    assert seen == [{}] and result.drift_resets is None
