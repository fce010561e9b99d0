"""Running per-id counts as model inputs: the inputs, the counting, and the state that carries them
(learner state, delta snapshots, serving)."""

from __future__ import annotations

import math

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings
from stream_learner.ingest.events import EventBatch, hash_id
from stream_learner.ingest.windowing import Window
from stream_learner.learning.counts import ACTIVITY_SCALE, PRIOR, IdCounts
from stream_learner.learning.learner import Learner
from stream_learner.serving.subscriber import ModelSubscriber, _serve
from stream_learner.snapshots import delta
from stream_learner.snapshots.chain import newest_state
from stream_learner.snapshots.format import Snapshot, SnapshotMeta, encode_payload
from tests.learning_support import assert_same_tensors, small_settings, windows


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_inputs_are_the_smoothed_rate_logit_and_the_activity_of_each_field() -> None:
    counts = IdCounts([("user", 4), ("item", 3)])
    rows = np.array([[1, 2], [1, 0], [3, 2]])
    counts.observe(rows, np.array([1.0, 1.0, 0.0]))
    assert counts.global_rate() == 2 / 3
    x = counts.inputs(np.array([[1, 2], [0, 1]]))
    prior = 2 / 3
    assert x.shape == (2, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], logit((2 + PRIOR * prior) / (2 + PRIOR)), rtol=1e-6)  # user 1: 2 of 2
    np.testing.assert_allclose(x[0, 1], math.log1p(2) / ACTIVITY_SCALE, rtol=1e-6)
    np.testing.assert_allclose(x[0, 2], logit((1 + PRIOR * prior) / (2 + PRIOR)), rtol=1e-6)  # item 2: 1 of 2
    np.testing.assert_allclose(x[1], [logit(prior), 0, logit(prior), 0], rtol=1e-6)  # never seen: the prior


def test_rows_given_to_new_ids_count_as_unseen_and_are_reset_when_counted() -> None:
    counts = IdCounts([("user", 4), ("item", 3)])
    counts.observe(np.array([[1, 2], [1, 2], [2, 0]]), np.array([1.0, 1.0, 0.0]))
    seen = counts.inputs(np.array([[1, 2]]))
    fresh = {0: np.array([1])}
    as_new = counts.inputs(np.array([[1, 2]]), fresh)
    assert as_new[0, 1] == 0 and as_new[0, 0] != seen[0, 0]  # the user row counts as unseen
    assert as_new[0, 2] == seen[0, 2]  # the item row is not fresh
    counts.reset(fresh)
    assert counts.arrays[0]["events"][1] == 0 and counts.arrays[1]["events"][2] == 2


def test_the_learner_counts_only_windows_it_trains() -> None:
    learner = Learner(small_settings(guard={"loss_spike_factor": 1.3}))
    ws = list(windows(5, size=200))
    for w in ws[:4]:
        learner.process(w)
    assert learner.features.counts is not None
    events = learner.features.counts.arrays[0]["events"]
    assert events.sum() == 800
    flipped = Window(
        ws[4].start_ms,
        ws[4].end_ms,
        EventBatch(**{**vars(ws[4].events), "label": 1 - ws[4].events.label}),
        ws[4].offsets,
        "count",
    )
    assert learner.process(flipped).skipped == "loss_spike"
    assert events.sum() == 800  # a refused window is not counted


def test_counts_round_trip_through_the_learner_state() -> None:
    a = Learner(small_settings())
    ws = list(windows(4, size=300))
    for w in ws[:3]:
        a.process(w)
    b = Learner(small_settings())
    b.restore(a.tensors(), a.state())
    assert_same_tensors(b.tensors(), a.tensors())
    assert "features.user.events" in a.tensors() and "features.item.positives" in a.tensors()
    ra, rb = a.process(ws[3]), b.process(ws[3])
    np.testing.assert_array_equal(ra.probabilities, rb.probabilities)
    assert_same_tensors(b.tensors(), a.tensors())


def _window(index: int, users: list[str], items: list[str], labels: list[float]) -> Window:
    n = len(users)
    start = 1_700_000_000_000 + index * 60_000
    events = EventBatch(
        user=np.array([hash_id(u) for u in users], np.int64),
        item=np.array([hash_id(i) for i in items], np.int64),
        context=np.empty((n, 0), np.int64),
        label=np.array(labels, np.float32),
        timestamp_ms=np.full(n, start, np.int64),
        partition=np.zeros(n, np.int32),
        offset=np.arange(index * n, (index + 1) * n, dtype=np.int64),
        item_ids=np.array(items, dtype=object),
    )
    return Window(start, start + 60_000, events, {0: (index * n, (index + 1) * n - 1)}, "watermark")


def _stream(count: int, seed: int = 0) -> list[Window]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        u, i = rng.integers(0, 30, 200), rng.integers(0, 10, 200)
        labels = (rng.random(200) < np.where(i < 5, 0.8, 0.2)).astype(float).tolist()
        out.append(_window(k, [f"u{x}" for x in u], [f"i{x}" for x in i], labels))
    return out


def _snapshot(tensors: dict[str, torch.Tensor], learner: Learner, version: int, base: int | None) -> Snapshot:
    kind = "FULL" if base is None else "DELTA"
    meta = SnapshotMeta("m", version, kind, learner.spec.to_json(), 0, 0, 0, 0, base_version=base)
    return Snapshot(meta, encode_payload(tensors).tobytes())


def test_a_delta_slices_the_counts_by_the_rows_the_window_touched() -> None:
    learner = Learner(small_settings(model={"context_fields": []}))
    stream = _stream(3)
    learner.process(stream[0])
    full = learner.tensors()
    learner.trainer.take_touched()
    layout = {k: tuple(v.shape) for k, v in full.items()}
    window = _window(9, ["u1", "u2"], ["i1", "i1"], [1.0, 0.0])
    learner.process(window)
    touched = learner.trainer.take_touched()
    cut = delta.extract(learner.tensors(copy=False), touched, learner.spec.fields, layout)
    rows = cut["delta.rows/user"]
    assert "features.user.events" not in cut  # sliced, not whole
    assert len(cut["delta.slice/user/features.user.events"]) == len(rows) == 2
    restored = newest_state([_snapshot(full, learner, 1, None), _snapshot(cut, learner, 2, 1)])
    for name in ("features.user.events", "features.user.positives", "features.item.events"):
        assert torch.equal(restored[name], learner.tensors()[name]), name


def test_serving_computes_the_learners_inputs_from_the_snapshot() -> None:
    learner = Learner(small_settings(model={"context_fields": []}))
    stream = _stream(4)
    for w in stream[:3]:
        learner.process(w)
    served = _serve([_snapshot(learner.tensors(), learner, 1, None)])
    subscriber = ModelSubscriber(KafkaSettings(), "t", "m", registry=CollectorRegistry())
    subscriber._swap(served)
    nxt = _window(7, ["u3"] * 10, [f"i{k}" for k in range(10)], [0.0] * 10)
    expected = learner.process(nxt).probabilities
    scores = subscriber.score("u3", [f"i{k}" for k in range(10)])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(scores) > 0.05  # items with different counts score differently
