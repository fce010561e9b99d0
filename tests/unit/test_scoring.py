"""The light serving path: every model kind scored in numpy as the torch model scores it (within
1e-6), with and without real-time inputs and context fields; the tensors of each kind as torch
builds them; and serving that imports no torch at all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_learner.learning.learner import Learner
from stream_learner.learning.models import MODELS, build_model
from stream_learner.scoring.layout import KINDS, state_shapes
from stream_learner.scoring.model import NumpyModel
from stream_learner.scoring.spec import FieldSpec, ModelSpec
from stream_learner.serving.model import ServableModel
from stream_learner.snapshots.format import SnapshotMeta, encode, encode_payload
from stream_learner.snapshots.state import arrays
from tests.learning_support import CONTEXT, small_settings, windows

CASES = [(kind, count, context) for kind in KINDS for count in (0, 7) for context in (0, 2)]


def _spec(kind: str, count_inputs: int, context: int, hidden: tuple[int, ...] = (8, 4)) -> ModelSpec:
    fields = [FieldSpec("user", 50), FieldSpec("item", 30)] + [
        FieldSpec(f"ctx.c{k}", 5) for k in range(context)
    ]
    extra = {"count_inputs": count_inputs} if count_inputs else {}
    return ModelSpec(kind, tuple(fields), embedding_dim=6, hidden=hidden, extra=extra)


def _torch_model(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """A model of ``spec`` with every weight random and of a size that moves the scores."""
    torch.manual_seed(seed)
    model = build_model(spec, sparse=False)
    with torch.no_grad():
        for weight in model.parameters():
            weight.normal_(0.0, 0.5)
    return model.eval()


def _torch_scores(model: torch.nn.Module, rows: np.ndarray, inputs: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        x = None if inputs is None else torch.from_numpy(inputs)
        return torch.sigmoid(model(torch.from_numpy(rows), x)).numpy()


def _batch(spec: ModelSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.integers(0, f.rows, n) for f in spec.fields], axis=1)
    inputs = rng.standard_normal((n, spec.count_inputs)).astype(np.float32) if spec.count_inputs else None
    return rows, inputs


@pytest.mark.parametrize(("kind", "count_inputs", "context"), CASES)
def test_numpy_scores_equal_the_torch_models(kind: str, count_inputs: int, context: int) -> None:
    spec = _spec(kind, count_inputs, context)
    model = _torch_model(spec, seed=len(CASES))
    state = {f"model.{k}": v.numpy() for k, v in model.state_dict().items()}
    rows, inputs = _batch(spec, 500, seed=1)
    expected = _torch_scores(model, rows, inputs)
    scores = NumpyModel(spec, state).scores(rows, inputs)
    assert scores.dtype == np.float32 and scores.shape == (500,)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert expected.min() < 0.25 and expected.max() > 0.75  # scores far from 0.5, both ways


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [(), (5,), (8, 4, 3)])
def test_the_tensors_of_each_kind_are_those_torch_builds(kind: str, hidden: tuple[int, ...]) -> None:
    for spec in (_spec(kind, 0, 0, hidden), _spec(kind, 7, 2, hidden)):
        torch_shapes = {k: tuple(v.shape) for k, v in build_model(spec, sparse=False).state_dict().items()}
        assert state_shapes(spec) == torch_shapes
    assert set(KINDS) == set(MODELS)


def test_a_state_that_does_not_fit_the_spec_is_refused() -> None:
    spec = _spec("fm", 7, 0)
    state = {f"model.{k}": v.numpy() for k, v in build_model(spec, sparse=False).state_dict().items()}
    NumpyModel(spec, state)
    for name, bad in (
        ("model.bias", None),
        ("model.count_head.weight", np.zeros((1, 6), np.float32)),
        ("model.embeddings.user.weight", state["model.embeddings.user.weight"].astype(np.float64)),
    ):
        broken = {k: v for k, v in state.items() if k != name} | ({} if bad is None else {name: bad})
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            NumpyModel(spec, broken)
    with pytest.raises(ValueError, match="count inputs"):
        NumpyModel(spec, state).scores(*_batch(_spec("fm", 0, 0), 3, seed=2))


def test_the_model_reads_the_states_arrays_as_they_change() -> None:
    """A delta folded into the state in place changes the scores (no copy is taken)."""
    spec = _spec("logistic", 0, 0)
    state = {f"model.{k}": v.numpy().copy() for k, v in build_model(spec, sparse=False).state_dict().items()}
    model = NumpyModel(spec, state)
    rows = np.array([[1, 2]])
    assert model.scores(rows)[0] == pytest.approx(0.5)
    state["model.bias"][0] = 2.0
    assert model.scores(rows)[0] == pytest.approx(1 / (1 + np.exp(-2.0)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("count_features", [True, False])
@pytest.mark.parametrize("context", [CONTEXT, ()])
def test_serving_scores_a_trained_model_as_torch_does(
    kind: str, count_features: bool, context: tuple[str, ...]
) -> None:
    """Ids -> rows -> real-time inputs as of a time -> scores: the numpy model against the torch model
    of the same learner's state."""
    model = {"kind": kind, "count_features": count_features, "context_fields": list(context)}
    learner = Learner(small_settings(model=model))
    for window in windows(3, seed=5, context=context):
        learner.process(window)
    state = arrays(learner.tensors())
    served = ServableModel(learner.spec, state)
    torch_model = build_model(learner.spec, sparse=False)
    torch_model.load_state_dict(
        {k.removeprefix("model."): torch.from_numpy(v) for k, v in state.items() if k.startswith("model.")}
    )
    torch_model.eval()
    items = [f"i{k}" for k in range(60)]
    ctx = {name: "a" for name in context}
    at = 3_000
    for user in ("u1", "u17", "u250", "new-user"):
        rows = served.mapper.rows_for_ids(
            [user] * len(items), items, {k: [v] * len(items) for k, v in ctx.items()}
        )
        inputs = None
        if count_features:
            inputs = served.mapper.realtime.query(rows[:, :2], np.full(len(items), at, np.int64))
        expected = _torch_scores(torch_model, rows, inputs)
        scores = served.score(user, items, ctx, at_ms=at)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
        assert np.ptp(scores) > 0.01  # a trained model: the items score differently


def test_serving_imports_no_torch_and_scores_without_it(tmp_path: Path) -> None:
    """In a process where torch cannot be imported, the command line and the subscriber's modules
    load, and a snapshot's chain is folded and scored as in this process."""
    learner = Learner(small_settings(model={"kind": "dnn"}))
    for window in windows(2, seed=3):
        learner.process(window)
    spec = learner.spec
    meta = SnapshotMeta("m", 1, "FULL", spec.to_json(), 0, 0, 0, 0)
    (message,) = encode(meta, encode_payload(arrays(learner.tensors())), 64 << 20)
    (tmp_path / "snapshot").write_bytes(message)
    items = [f"i{k}" for k in range(20)]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch fails
        from stream_learner.cli import main  # every command but those that train
        from stream_learner.serving import ModelSubscriber
        from stream_learner.serving.subscriber import _servable
        from stream_learner.snapshots import chain
        from stream_learner.snapshots.format import Assembler, decode_chunk
        snapshot = Assembler().add(decode_chunk(open({str(tmp_path / "snapshot")!r}, "rb").read()))
        served = _servable(*chain.load([snapshot]))
        scores = served.model.score("u3", {items!r}, {{"device": "d1"}}, at_ms=2_500)
        print(json.dumps([float(s) for s in scores]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scores = np.array(json.loads(done.stdout))
    expected = ServableModel(spec, arrays(learner.tensors())).score(
        "u3", items, {"device": "d1"}, at_ms=2_500
    )
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-7)
    assert np.ptp(scores) > 0.01
