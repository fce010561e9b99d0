"""The trainer: optimisers, clipping, weight decay, the non-finite guard's rollback, row resets, state,
and the CUDA code paths (bf16 autocast, non-blocking copies) exercised on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stream_learner.config import TrainSettings
from stream_learner.errors import ConfigError
from stream_learner.learning.models import FieldSpec, ModelSpec, build_model
from stream_learner.learning.trainer import Trainer, mini_batch_size, resolve_device
from tests.learning_support import assert_same_tensors

SPEC = ModelSpec("dnn", (FieldSpec("user", 50), FieldSpec("item", 20), FieldSpec("ctx.d", 3)), 4, (8,), 0.0)


def data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label follows the item (learnable), for a small model."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.integers(0, 50, n), rng.integers(0, 20, n), rng.integers(0, 3, n)], axis=1)
    labels = (rng.random(n) < np.where(rows[:, 1] < 10, 0.8, 0.2)).astype(np.float32)
    return rows.astype(np.int64), labels


def trainer(lr: float = 0.1, **settings: object) -> Trainer:
    torch.manual_seed(0)
    return Trainer(build_model(SPEC), TrainSettings(device="cpu", batch_size=64, **settings), lr)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "rowwise_adagrad"])
def test_each_sparse_optimiser_learns(optimizer: str) -> None:
    t = trainer(0.05 if optimizer == "adam" else 0.2, sparse_optimizer=optimizer, passes=3)
    rows, labels = data()
    before = t.evaluate(rows, labels)
    result = t.train(rows, labels, t.sparse_opt.param_groups[0]["lr"], seed=1)
    after = t.evaluate(rows, labels)
    size = mini_batch_size(600, t.settings.min_batch_size, 64, t.settings.window_steps)
    assert result.applied and result.steps == 3 * math.ceil(600 / size)
    assert after.loss < before.loss - 0.05 and after.auc > 0.75
    if optimizer == "rowwise_adagrad":
        assert t.sparse_opt.state[t.tables["embeddings.user"].weight]["sum"].shape == (50,)


def test_non_finite_loss_rolls_the_whole_window_back() -> None:
    t = trainer(dense_lr_ratio=0.5)
    rows, labels = data()
    t.train(rows, labels, 0.1, seed=1)
    t.take_touched()
    before = t.state_tensors()
    labels[-1] = np.nan  # the last mini-batches go bad after earlier ones were applied
    result = t.train(rows, labels, 0.1, seed=2)
    assert not result.applied and result.reason == "non_finite"
    assert_same_tensors(t.state_tensors(), before)
    assert all(len(r) == 0 for r in t.take_touched().values())  # nothing changed, nothing to ship
    rows2, labels2 = data(seed=3)
    assert t.train(rows2, labels2, 0.1, seed=3).applied  # and training goes on afterwards


def test_touched_rows_are_reported_per_table_once() -> None:
    t = trainer()
    rows, labels = data(50)
    t.train(rows, labels, 0.1, seed=1, fresh={1: np.array([19])})
    touched = t.take_touched()
    for name, field in t.table_field.items():
        expected = set(rows[:, field].tolist()) | ({19} if field == 1 else set())
        assert set(touched[name].tolist()) == expected, name
    assert all(len(r) == 0 for r in t.take_touched().values())


def test_fresh_rows_start_over_with_no_optimiser_state() -> None:
    t = trainer()
    rows, labels = data()
    t.train(rows, labels, 0.1, seed=1)
    item = t.tables["embeddings.item"].weight
    first = t.tables["linear.weights.item"].weight
    assert t.sparse_opt.state[item]["sum"][3].abs().sum() > 0
    # Row 3 of the item field goes to a new id; no event of this window uses it.
    keep = rows[:, 1] != 3
    t.train(rows[keep][:0], labels[keep][:0], 0.1, seed=2)  # an empty window resets nothing
    assert t.sparse_opt.state[item]["sum"][3].abs().sum() > 0
    t.train(rows[keep][:10], labels[keep][:10], 0.1, seed=2, fresh={1: np.array([3])})
    assert t.sparse_opt.state[item]["sum"][3].abs().sum() == 0
    assert first[3].abs().sum() == 0
    assert 0 < item[3].abs().max() < 1  # a fresh random row


def test_gradients_are_clipped_to_the_limit() -> None:
    torch.manual_seed(0)  # one step of the whole window
    t = Trainer(build_model(SPEC), TrainSettings(device="cpu", grad_clip=0.01, min_batch_size=1024), 0.1)
    rows, labels = data()
    assert t.train(rows, labels, 0.1, seed=1).steps == 1
    # the mean loss's gradient is clipped; the tables then take per-event sums (600 x the mean's),
    # which after one Adagrad step are the square roots of its sums
    tables = [t.sparse_opt.state[table.weight]["sum"].sqrt() / 600 for table in t.tables.values()]
    grads = tables + [p.grad for p in t.dense_params.values()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert 0.01 * (1 - 1e-4) <= norm <= 0.01 * (1 + 1e-4)


def test_weight_decay_shrinks_only_the_rows_trained() -> None:
    plain, decayed = trainer(), trainer(weight_decay=1.0)
    rows, labels = data(100)
    rows[:, 0] = rows[:, 0] % 10  # users 10..49 are never seen
    for t in (plain, decayed):
        t.train(rows, labels, 0.5, seed=1)
    a, b = plain.tables["embeddings.user"].weight, decayed.tables["embeddings.user"].weight
    assert torch.equal(a[10:], b[10:])
    assert b[:10].norm() < a[:10].norm()


def test_state_round_trips_for_every_optimiser_and_names_what_does_not_fit() -> None:
    for optimizer in ("adagrad", "adam", "rowwise_adagrad"):
        a, b = trainer(sparse_optimizer=optimizer), trainer(sparse_optimizer=optimizer)
        rows, labels = data()
        a.train(rows, labels, 0.05, seed=1)
        b.load_state_tensors(a.state_tensors())
        assert_same_tensors(b.state_tensors(), a.state_tensors())
        a.train(rows, labels, 0.05, seed=2)
        b.train(rows, labels, 0.05, seed=2)
        assert_same_tensors(b.state_tensors(), a.state_tensors())
    state = trainer().state_tensors()
    state["model.embeddings.user.weight"] = torch.zeros(51, 4)
    del state["model.bias"]
    state["model.extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        trainer().load_state_tensors(state)
    text = str(err.value)
    assert "missing bias" in text and "unexpected extra" in text and "(51, 4)" in text


def test_bf16_autocast_and_device_copies_run_on_the_cpu() -> None:
    t = trainer(precision="bf16")
    assert t.autocast and t.device.type == "cpu"
    rows, labels = data()
    before = t.evaluate(rows, labels)
    t.train(rows, labels, 0.2, seed=1)
    probs = t.predict(rows)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    assert t.evaluate(rows, labels).loss < before.loss
    assert not trainer(precision="auto").autocast  # auto is fp32 on the CPU


def test_device_names_resolve() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device.*no CUDA device"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ConfigError, match=r"train\.device.*GPUs exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_training_leaves_a_core_to_the_polling_loop_unless_told_otherwise(monkeypatch) -> None:
    from stream_learner.learning.cpus import available_cpus, cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads(0) == max(1, available_cpus() - 1)
    assert cpu_threads(3) == 3
    before = torch.get_num_threads()
    try:
        trainer()  # default settings: threads = 0
        assert torch.get_num_threads() == cpu_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("events", "size"),
    [(1, 8), (13, 8), (128, 8), (1_000, 63), (10_000, 625), (16_384, 1024), (100_000, 1024)],
)
def test_the_mini_batch_adapts_to_the_window_between_a_floor_and_the_batch_size(
    events: int, size: int
) -> None:
    assert mini_batch_size(events, 8, 1024, 16) == size  # the defaults


def test_small_windows_take_several_steps_and_large_ones_keep_large_mini_batches() -> None:
    t = trainer()  # batch_size 64 here; the floor and the steps per window are the defaults
    rows, labels = data(2_000)
    steps = [t.train(rows[:n], labels[:n], 0.1, seed=n).steps for n in (5, 40, 600, 2_000)]
    assert steps == [1, 5, 16, 32]  # one mini-batch; 8 events each; 16 steps; mini-batches of 64


def test_a_table_rows_step_does_not_depend_on_who_else_shares_its_mini_batch() -> None:
    """Table gradients are per-event sums: after one step, the Adagrad sum of a row seen once is its
    event's squared gradient whether 7 or 47 other events share the mini-batch (with the mean loss it
    would be 36 times smaller in the larger one)."""
    rows, labels = data(48)
    rows[:, 0] = np.arange(48)  # every user once
    sums = []
    for n in (8, 48):
        t = trainer(min_batch_size=n)  # batch_size 64: one step either way
        assert t.train(rows[:n], labels[:n], 0.1, seed=1).steps == 1
        sums.append(t.sparse_opt.state[t.tables["linear.weights.user"].weight]["sum"][:8, 0])
    assert torch.all(sums[0] > 1e-3)
    torch.testing.assert_close(sums[0], sums[1])


def test_fm_steps_on_its_closed_form_and_ends_where_autograd_would(monkeypatch) -> None:
    """The FM's steps use its hand-worked gradients (two windows: weights, Adagrad sums, Adam state)
    and end where the same steps through autograd end, up to float rounding."""
    spec = ModelSpec("fm", SPEC.fields, 4, extra={"count_inputs": 2})
    rows, labels = data()
    inputs = np.random.default_rng(1).standard_normal((len(rows), 2)).astype(np.float32)
    states, calls = [], []
    for closed in (True, False):
        torch.manual_seed(0)
        t = Trainer(build_model(spec), TrainSettings(device="cpu", batch_size=64), 0.1)
        real = t.model.closed_form
        monkeypatch.setattr(
            t.model,
            "closed_form",
            lambda *a, real=real, on=closed: calls.append(on) or (real(*a) if on else None),
        )
        for seed in (1, 2):
            t.train(rows, labels, 0.1, seed=seed, inputs=inputs)
        states.append(t.state_tensors())
    assert calls.count(True) == calls.count(False) > 2
    assert states[0].keys() == states[1].keys()
    for name, value in states[0].items():
        torch.testing.assert_close(value, states[1][name], rtol=1e-4, atol=1e-6, msg=name)
