"""The serving form (snapshots/serving_form.py): int8 error bounded per row, scores of every precision
close to the training form's, absent rows scored as unseen ids, deltas that fold to the conversion
of the state they lead to, signatures that tell the forms apart, and a learner's restore that refuses
the serving form with its reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from stream_learner.errors import SnapshotError
from stream_learner.ingest.events import hash_id
from stream_learner.learning.features import FREE, FeatureMapper
from stream_learner.learning.learner import Learner
from stream_learner.learning.realtime import NO_TIME
from stream_learner.scoring import compact
from stream_learner.scoring.spec import FieldSpec, ModelSpec
from stream_learner.serving.compact import expand_features
from stream_learner.serving.model import ServableModel
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots import serving_form, signing
from stream_learner.snapshots.format import (
    Assembler,
    Snapshot,
    SnapshotMeta,
    decode_chunk,
    encode,
    encode_payload,
)
from stream_learner.snapshots.state import StateCopier, arrays
from tests.learning_support import small_settings, windows

USERS = [f"u{k}" for k in range(0, 300, 7)]
ITEMS = [f"i{k}" for k in range(60)]
CTX = {"device": "device1", "section": "section2"}
AT = 5_000


def _learner(kind: str = "fm", table: str = "hash", trained: int = 4) -> tuple[Learner, Iterator]:
    model = {"kind": kind, "table": table, "embedding_dim": 8}
    learner = Learner(small_settings(model=model))
    stream = windows(trained + 3, seed=3)
    for _ in range(trained):
        learner.process(next(stream))
    return learner, stream


def _snapshot(
    spec: ModelSpec, tensors: dict[str, np.ndarray], version: int = 1, kind: str = "FULL", sign=None
) -> Snapshot:
    meta = SnapshotMeta(
        model_name="m",
        version=version,
        kind=kind,  # type: ignore[arg-type]
        spec=spec.to_json(),
        created_ms=0,
        window_start_ms=0,
        window_end_ms=0,
        newest_event_ms=0,
        base_version=version - 1 if kind == "DELTA" else None,
        form="serving",
    )
    assembler = Assembler()
    out = None
    for message in encode(meta, encode_payload(tensors), 1 << 20, sign):
        out = assembler.add(decode_chunk(message))
    assert out is not None
    return out


def _scores(model: ServableModel) -> np.ndarray:
    return np.stack([model.score(user, ITEMS, CTX, at_ms=AT) for user in [*USERS, "never-seen"]])


def _absent_zeroed(spec: ModelSpec, state: dict[str, np.ndarray], form: dict[str, np.ndarray]) -> dict:
    """The training state with every row the serving form leaves out set to what it reads as."""
    out = {name: value.copy() for name, value in state.items()}
    for f in spec.fields:
        key = f.name.replace(".", "_")
        absent = np.setdiff1d(np.arange(f.rows), form[compact.rows_name(key)])
        for name in (f"model.embeddings.{key}.weight", f"model.linear.weights.{key}.weight"):
            if name in out:
                out[name][absent] = 0
        if f"features.{f.name}.sums" in out:
            out[f"features.{f.name}.sums"][absent] = 0
            out[f"features.{f.name}.labels_ms"][absent] = NO_TIME
    return out


def test_int8_round_trip_error_is_at_most_half_a_step_per_row() -> None:
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((500, 16)) * rng.uniform(1e-4, 3.0, (500, 1))).astype(np.float32)
    weights[7] = 0.0
    codes, scales = serving_form.quantise(weights)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert int(np.abs(codes).max()) == serving_form.LEVELS
    error = np.abs(weights - compact.dequantise(codes, scales))
    assert (error <= scales[:, None] / 2 * (1 + 1e-6)).all()
    assert scales[7] == 0 and not error[7].any()
    assert (error.max(axis=1) > 0).sum() > 400  # it is quantised: most rows are not exact


@pytest.mark.parametrize("kind", ["logistic", "fm", "dnn"])
@pytest.mark.parametrize("table", ["hash", "dynamic"])
def test_every_precision_scores_close_to_the_training_form(kind: str, table: str) -> None:
    """Against the training state with the absent rows read as the serving form reads them: fp32
    the same scores, fp16 and int8 close; each smaller than the one before."""
    learner, _ = _learner(kind, table)
    state = arrays(learner.tensors())
    expected = _scores(
        ServableModel(
            learner.spec,
            _absent_zeroed(learner.spec, state, serving_form.convert(state, learner.spec, "fp32")),
        )
    )
    tolerance = {"fp32": 1e-6, "fp16": 2e-3, "int8": 2e-2}
    sizes = {}
    for precision, atol in tolerance.items():
        form = serving_form.convert(state, learner.spec, precision)
        assert not any(name.startswith("optim.") for name in form)
        model = ServableModel(learner.spec, form)
        assert model.model.compact
        np.testing.assert_allclose(_scores(model), expected, rtol=0, atol=atol)
        sizes[precision] = encode_payload(form).size
    assert sizes["fp16"] < sizes["fp32"] < encode_payload(state).size / 2
    assert sizes["int8"] < sizes["fp16"] or kind == "logistic"  # a logistic model's tables are one wide


def test_feature_state_is_narrowed_exactly() -> None:
    learner, _ = _learner()
    state = arrays(learner.tensors())
    form = serving_form.convert(state, learner.spec, "int8")
    events = form[compact.aligned_name("user", "features.user.sums.0")]
    assert events.dtype.kind == "u" and events.dtype.itemsize <= 2  # a few thousand events
    rows = form[compact.rows_name("user")]
    for column in range(6):
        values = form[compact.aligned_name("user", f"features.user.sums.{column}")]
        np.testing.assert_array_equal(values.astype(np.float64), state["features.user.sums"][rows, column])


def test_an_absent_hashed_row_scores_as_zeros() -> None:
    """A row never trained is absent: its id scores as if its weights and features were zeros."""
    learner, _ = _learner()
    state = arrays(learner.tensors())
    form = serving_form.convert(state, learner.spec, "fp32")
    present = form[compact.rows_name("user")]
    absent = next(r for r in range(512) if r not in set(present.tolist()))
    user = next(
        f"new{k}" for k in range(10_000) if learner.features.fields[0].lookup(_key(f"new{k}"))[0] == absent
    )
    zeroed = {name: value.copy() for name, value in state.items()}
    for name in ("model.embeddings.user.weight", "model.linear.weights.user.weight", "features.user.sums"):
        zeroed[name][absent] = 0
    expected = ServableModel(learner.spec, zeroed).score(user, ITEMS, CTX, at_ms=AT)
    assert not np.allclose(
        ServableModel(learner.spec, state).score(user, ITEMS, CTX, at_ms=AT), expected, atol=1e-6
    )
    np.testing.assert_allclose(
        ServableModel(learner.spec, form).score(user, ITEMS, CTX, at_ms=AT), expected, atol=1e-6
    )


def _key(user: str) -> np.ndarray:
    return np.array([hash_id(user)], np.int64)


def test_a_pruned_dynamic_slot_scores_as_an_unseen_id() -> None:
    learner, _ = _learner(table="dynamic")
    state = arrays(learner.tensors())
    slot = int(learner.features.fields[0].lookup(_key("u7"))[0])
    assert slot > 0
    state["features.user.last_seen_ms"][slot] = FREE  # the slot freed, its state left behind
    form = ServableModel(learner.spec, serving_form.convert(state, learner.spec, "fp32"))
    np.testing.assert_allclose(
        form.score("u7", ITEMS, CTX, at_ms=AT), form.score("never-seen", ITEMS, CTX, at_ms=AT), atol=1e-7
    )


@pytest.mark.parametrize("table", ["hash", "dynamic"])
def test_serving_deltas_fold_to_the_conversion_of_the_state_they_lead_to(table: str) -> None:
    learner, stream = _learner(table=table, trained=2)
    copier = StateCopier(learner, full_every=100)
    spec = learner.spec
    fold = serving_form.ServingFold(
        _snapshot(spec, serving_form.convert(copier.copy().tensors, spec, "int8")), spec
    )
    for version in (2, 3, 4):
        learner.process(next(stream))
        copy = copier.copy()
        assert copy.kind == "DELTA"
        fold.apply(_snapshot(spec, serving_form.convert(copy.tensors, spec, "int8"), version, "DELTA"))
    whole = serving_form.convert(arrays(learner.tensors()), spec, "int8")
    assert sorted(fold.tensors) == sorted(whole)
    for name, value in whole.items():
        np.testing.assert_array_equal(
            fold.tensors[name].astype(np.float64), value.astype(np.float64), err_msg=name
        )
    np.testing.assert_allclose(
        _scores(ServableModel(spec, fold.tensors)), _scores(ServableModel(spec, whole)), atol=1e-7
    )


def test_a_delta_adds_rows_removes_gone_ones_and_refuses_what_does_not_fit() -> None:
    spec = ModelSpec("logistic", (FieldSpec("user", 8), FieldSpec("item", 4)), embedding_dim=1, hidden=())

    def tensors(rows: list[int], value: float) -> dict[str, np.ndarray]:
        out = {"model.bias": np.zeros(1, np.float32), compact.rows_name("item"): np.empty(0, np.int32)}
        out[compact.aligned_name("item", "model.embeddings.item.weight")] = np.empty((0, 1), np.float32)
        out[compact.rows_name("user")] = np.array(rows, np.int32)
        out[compact.aligned_name("user", "model.embeddings.user.weight")] = np.full(
            (len(rows), 1), value, np.float32
        )
        return out

    fold = serving_form.ServingFold(_snapshot(spec, tensors([1, 3, 5], 1.0)), spec)
    change = tensors([2, 3], 2.0) | {serving_form.GONE + "user": np.array([5], np.int32)}
    del (
        change[compact.rows_name("item")],
        change[compact.aligned_name("item", "model.embeddings.item.weight")],
    )
    bad = dict(change) | {compact.rows_name("user"): np.array([3, 2], np.int32)}
    with pytest.raises(SnapshotError) as refused:
        fold.apply(_snapshot(spec, bad, 2, "DELTA"))
    assert refused.value.reason == "bad_delta"
    np.testing.assert_array_equal(fold.tensors[compact.rows_name("user")], [1, 3, 5])
    fold.apply(_snapshot(spec, change, 2, "DELTA"))
    np.testing.assert_array_equal(fold.tensors[compact.rows_name("user")], [1, 2, 3])
    weights = fold.tensors[compact.aligned_name("user", "model.embeddings.user.weight")][:, 0]
    np.testing.assert_array_equal(weights, [1.0, 2.0, 2.0])


def test_signatures_cover_the_form() -> None:
    """A serving form verifies; relabelled as a training snapshot (or the reverse) it does not."""
    private, public = signing.generate()
    learner, _ = _learner(trained=1)
    form = serving_form.convert(arrays(learner.tensors()), learner.spec, "fp16")
    sign = signing.Signer(signing.private_key(private))
    snap = _snapshot(learner.spec, form, sign=sign)
    assert snap.meta.form == "serving"
    verifier = signing.Verifier.of(public, True)
    assert verifier is not None
    chunk = decode_chunk(next(encode(snap.meta, encode_payload(form), 1 << 20, sign)))
    verifier(chunk)
    with pytest.raises(SnapshotError) as refused:
        verifier(replace(chunk, meta=replace(chunk.meta, form="training")))
    assert refused.value.reason == "signature"


def test_a_serving_snapshot_refuses_to_restore_a_learner() -> None:
    learner, _ = _learner(trained=1)
    snap = _snapshot(learner.spec, serving_form.convert(arrays(learner.tensors()), learner.spec, "int8"))
    with pytest.raises(SnapshotError) as refused:
        chains.load([snap])
    assert refused.value.reason == "form"
    assert "no optimiser state" in str(refused.value) and "cannot restore a learner" in str(refused.value)


@pytest.mark.parametrize("table", ["hash", "dynamic"])
def test_a_follower_of_the_input_takes_the_serving_forms_features_in_the_training_layout(table: str) -> None:
    """The input follower needs every row: the serving form's features expanded give the training
    form's mapping and real-time inputs, absent rows empty."""
    learner, _ = _learner(table=table)
    spec, state = learner.spec, arrays(learner.tensors())
    form = serving_form.convert(state, spec, "int8")
    expanded = FeatureMapper.from_spec(spec, expand_features(spec, form))
    training = FeatureMapper.from_spec(spec, _absent_zeroed(spec, state, form))
    users, items = [*USERS, "never-seen"] * 2, ITEMS[: len(USERS) + 1] * 2
    rows = expanded.rows_for_ids(users, items)
    np.testing.assert_array_equal(rows, training.rows_for_ids(users, items))
    assert expanded.realtime is not None and training.realtime is not None
    at = np.full(len(rows), AT, np.int64)
    np.testing.assert_array_equal(
        expanded.realtime.query(rows[:, :2], at), training.realtime.query(rows[:, :2], at)
    )
