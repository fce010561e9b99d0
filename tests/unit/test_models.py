"""One contract for every model (in the manner of river's checks), run through the learner:

- its whole state round-trips exactly through a snapshot payload (safetensors), and the restored
  learner then trains exactly as the original does;
- an empty window changes nothing;
- the same seed and the same windows give the same weights on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from stream_learner.learning.learner import Learner
from stream_learner.learning.models import MODELS, FieldSpec, ModelSpec, build_model
from tests.learning_support import assert_same_tensors, empty_window, small_settings, windows

CASES = [(kind, table) for kind in sorted(MODELS) for table in ("hash", "dynamic")]


def _learner(kind: str, table: str, **train: object) -> Learner:
    return Learner(small_settings(model={"kind": kind, "table": table}, train=dict(train)))


@pytest.mark.parametrize(("kind", "table"), CASES)
def test_state_round_trips_exactly_through_a_snapshot(kind: str, table: str) -> None:
    ws = list(windows(3))
    original = _learner(kind, table)
    for w in ws[:2]:
        original.process(w)
    payload = save(original.tensors())
    state = json.loads(json.dumps(original.state()))

    restored = _learner(kind, table)
    restored.restore(load(payload), state)
    assert_same_tensors(restored.tensors(), original.tensors())
    assert restored.state() == original.state()

    # Restored exactly means it goes on exactly alike: same scores, same weights after the next window.
    a, b = original.process(ws[2]), restored.process(ws[2])
    assert a.evaluation == b.evaluation and a.lr == b.lr
    assert_same_tensors(restored.tensors(), original.tensors())


@pytest.mark.parametrize(("kind", "table"), CASES)
def test_an_empty_window_changes_nothing(kind: str, table: str) -> None:
    learner = _learner(kind, table)
    learner.process(next(windows(1)))
    before, state = learner.tensors(), learner.state()
    result = learner.process(empty_window(5_000))
    assert result.events == 0 and result.step is None and result.skipped is None
    assert_same_tensors(learner.tensors(), before)
    assert learner.state() == state


@pytest.mark.parametrize(("kind", "table"), CASES)
def test_same_seed_and_windows_give_the_same_weights(kind: str, table: str) -> None:
    a, b = _learner(kind, table), _learner(kind, table)
    for w in windows(2):
        a.process(w)
    for w in windows(2):
        b.process(w)
    assert_same_tensors(a.tensors(), b.tensors())
    c = _learner(kind, table, seed=1)
    for w in windows(2):
        c.process(w)
    assert not torch.equal(
        a.tensors()["model.embeddings.item.weight"], c.tensors()["model.embeddings.item.weight"]
    )


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_model_learns_the_synthetic_stream(kind: str) -> None:
    learner = _learner(kind, "hash")
    aucs = [learner.process(w).evaluation.auc for w in windows(8, size=2_000)]
    assert aucs[-1] > aucs[0] + 0.1, aucs


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_tables_cover_every_field_and_are_sparse(kind: str) -> None:
    spec = ModelSpec(kind, (FieldSpec("user", 10), FieldSpec("item", 7), FieldSpec("ctx.d", 3)), 4, (8,))
    model = build_model(spec)
    tables = model.tables()
    assert {n.rsplit(".", 1)[-1] for n in tables} == {"user", "item", "ctx_d"}
    assert all(t.sparse for t in tables.values())
    fields = model.table_fields()
    assert {fields[f"embeddings.{n}"] for n in ("user", "item", "ctx_d")} == {0, 1, 2}
    out = model(torch.tensor([[1, 2, 0], [9, 6, 2]]))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_spec_round_trips_through_json() -> None:
    spec = ModelSpec("fm", (FieldSpec("user", 10, "dynamic"), FieldSpec("item", 7)), 8, (4, 2), 0.2)
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        build_model(ModelSpec("svm", (FieldSpec("user", 3),)))


@pytest.mark.parametrize("fields", [1, 2, 3])
@pytest.mark.parametrize("counts", [0, 4])
def test_fm_closed_form_gradients_equal_autograd(fields: int, counts: int) -> None:
    """The FM's hand-worked loss and gradients (what the trainer steps on) are autograd's: per
    table the rows used and their summed gradients, and the bias and count head's gradients."""
    names = ("user", "item", "ctx.d")[:fields]
    spec = ModelSpec(
        "fm", tuple(FieldSpec(n, 30) for n in names), 4, extra={"count_inputs": counts} if counts else {}
    )
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # non-zero first-order weights and head, so every term shows
        for table in model.tables().values():
            table.weight.add_(torch.randn_like(table.weight) * 0.3)
        if model.count_head is not None:
            model.count_head.weight.add_(torch.randn_like(model.count_head.weight))
    rows = torch.randint(0, 12, (40, fields))  # repeated ids: gradients of a row add up
    labels = (torch.rand(40) < 0.4).float()
    inputs = torch.randn(40, counts) if counts else None

    closed = model.closed_form(rows, labels, inputs)
    assert closed is not None
    assert all(table.weight.grad is None for table in model.tables().values())  # left to the trainer
    dense = {"bias": model.bias.grad.clone()}
    if model.count_head is not None:
        dense["count_head.weight"] = model.count_head.weight.grad.clone()

    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(rows, inputs), labels)
    loss.backward()
    torch.testing.assert_close(closed.loss, loss.detach())
    assert set(closed.tables) == set(model.tables())
    for name, table in model.tables().items():
        grad = table.weight.grad.coalesce()
        used, got = closed.tables[name]
        torch.testing.assert_close(used, grad.indices()[0])
        torch.testing.assert_close(got, grad.values())
    params = dict(model.named_parameters())
    for name, grad in dense.items():
        torch.testing.assert_close(grad, params[name].grad)


@pytest.mark.parametrize("kind", ["dnn", "logistic"])
def test_other_models_leave_their_gradients_to_autograd(kind: str) -> None:
    model = build_model(ModelSpec(kind, (FieldSpec("user", 10), FieldSpec("item", 7)), 4, (8,)))
    assert model.closed_form(torch.tensor([[1, 2]]), torch.tensor([1.0])) is None
