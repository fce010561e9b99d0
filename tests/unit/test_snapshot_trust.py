"""Key-less trust in a snapshot history: versions one apart with one model spec (`log.History`,
`log.continues`), finite tensors (`chain.Fold`), optimiser state that fits the learner (`fit`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.learning.learner import Learner
from stream_learner.snapshots.chain import Fold, load
from stream_learner.snapshots.fit import OptimiserLayout
from stream_learner.snapshots.format import Assembler, Snapshot, decode_chunk
from stream_learner.snapshots.log import Entry, History, continues
from stream_learner.snapshots.state import arrays
from tests.snapshot_support import logistic_delta, logistic_spec, logistic_state, messages, meta

MODEL = "m"


def _entries(*versions: int, spec_rows: int = 64) -> list[Entry]:
    """Verified snapshots of the given versions, newest first as `newest_first` reads them."""
    spec = logistic_spec(spec_rows)
    return [Entry(v, snapshot=Snapshot(meta(MODEL, v, "FULL", spec), b"")) for v in versions]


def _judge(entries: list[Entry]) -> list[tuple[int | None, str | None]]:
    history, out = History(), []
    for entry in entries:
        out += history.add(entry)
    out += history.finish()
    return [
        (e.snapshot.meta.version if e.snapshot else e.offset, e.error.reason if e.error else None)
        for e in out
    ]


def test_a_genuine_history_is_accepted_in_order():
    assert _judge(_entries(5, 4, 3)) == [(5, None), (4, None), (3, None)]


def test_a_version_more_than_one_past_the_one_before_is_refused():
    # a forged v2^62 after v20: refused, and v20 is the newest (the learner numbers on from 21)
    assert _judge(_entries(1 << 62, 20, 19)) == [(1 << 62, "version"), (20, None), (19, None)]


def test_a_later_lower_version_wins_and_a_gap_after_it_counts_against_the_one_before():
    # the learner's v21 after a forged v1000: v1000 is out of order, v21 continues v20
    assert _judge(_entries(21, 1000, 20)) == [(21, None), (1000, "version"), (20, None)]


def test_another_model_spec_does_not_continue_the_history():
    other = _entries(4, spec_rows=32)
    assert _judge([*other, *_entries(3, 2)]) == [(4, "spec"), (3, None), (2, None)]


def test_refusals_read_while_a_snapshot_waits_come_out_after_it():
    damaged = Entry(99, error=SnapshotError("checksum", "damaged"))
    entries = _entries(3, 2)
    assert _judge([entries[0], damaged, entries[1]]) == [(3, None), (99, "checksum"), (2, None)]


def test_continues_compares_specs_as_models_not_as_text():
    before = meta(MODEL, 1)
    same = dataclasses.replace(meta(MODEL, 2), spec=before.spec.replace('"kind"', ' "kind"', 1))
    assert same.spec != before.spec and continues(same, before) is None


def _snapshot(version: int, tensors: dict[str, np.ndarray], kind: str = "FULL") -> Snapshot:
    out = None
    assembler = Assembler()
    for message in messages(meta(MODEL, version, kind), tensors):
        out = assembler.add(decode_chunk(message))
    assert out is not None
    return out


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_in_a_full_snapshot_and_in_a_delta(bad):
    spec = logistic_spec()
    poisoned = logistic_state(spec, 0.1)
    poisoned["model.bias"][0] = bad
    with pytest.raises(SnapshotError) as full:
        load([_snapshot(1, poisoned)])
    assert full.value.reason == "non_finite"
    fold = Fold(_snapshot(1, logistic_state(spec, 0.1)))
    delta = logistic_delta(spec, 0.2)
    delta["model.bias"][0] = bad
    with pytest.raises(SnapshotError) as refused:
        fold.apply(_snapshot(2, delta, "DELTA"))
    assert refused.value.reason == "non_finite"
    assert fold.meta.version == 1 and np.isfinite(fold.tensors["model.bias"]).all()  # unchanged


def _learner() -> Learner:
    return Learner(
        Settings.model_validate({"model": {"kind": "logistic", "user_buckets": 64, "item_buckets": 32}})
    )


def test_optimiser_state_must_fit_the_learner():
    learner = _learner()
    fits, tensors, about = OptimiserLayout.of(learner), arrays(learner.tensors()), meta(MODEL, 3)
    assert any(n.startswith("optim.sparse.") for n in tensors)
    fits.check(3, tensors, about)  # a learner's own state fits

    missing = {n: t for n, t in tensors.items() if not n.startswith("optim.sparse.")}
    wrong_shape = {n: t[:1] if n.endswith(".sum") else t for n, t in tensors.items()}
    wrong_dtype = {n: t.astype(np.float64) if n.startswith("optim.") else t for n, t in tensors.items()}
    stray = {**tensors, "optim.dense.nothing.exp_avg": np.zeros(3, np.float32)}
    for bad in (missing, wrong_shape, wrong_dtype, stray):
        with pytest.raises(SnapshotError) as refused:
            fits.check(3, bad, about)
        assert refused.value.reason == "missing_tensor"


def test_state_of_another_sparse_optimiser_is_not_required():
    learner = _learner()
    other = dataclasses.replace(meta(MODEL, 3), state='{"learner": {"sparse_optimizer": "adam"}}')
    tensors = {n: t for n, t in arrays(learner.tensors()).items() if not n.startswith("optim.sparse.")}
    OptimiserLayout.of(learner).check(3, tensors, other)  # the restore drops it and starts afresh
