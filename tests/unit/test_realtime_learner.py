"""Real-time per-id features in the learner: what it counts, as of when, and the state that carries
them (learner state, delta snapshots, serving from a snapshot)."""

from __future__ import annotations

import math

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings
from stream_learner.ingest.events import EventBatch, hash_id
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner
from stream_learner.learning.realtime import EVENTS
from stream_learner.serving.subscriber import ModelSubscriber, _servable
from stream_learner.snapshots import chain
from stream_learner.snapshots.chain import newest_state
from stream_learner.snapshots.format import Snapshot, SnapshotMeta, encode_payload
from stream_learner.snapshots.state import arrays, extract
from tests.learning_support import assert_same_tensors, small_settings, windows


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_the_learner_counts_every_window_it_handles_trained_or_not() -> None:
    learner = Learner(small_settings(guard={"loss_spike_factor": 1.3}))
    ws = list(windows(5, size=200))
    for w in ws[:4]:
        learner.process(w)
    realtime = learner.features.realtime
    assert realtime is not None
    events = realtime.sums[0][:, EVENTS]
    assert events.sum() == 800
    flipped = Window(
        ws[4].start_ms,
        ws[4].end_ms,
        EventBatch(**{**vars(ws[4].events), "label": 1 - ws[4].events.label}),
        ws[4].offsets,
        "count",
    )
    assert learner.process(flipped).skipped == "loss_spike"
    assert events.sum() == 1000  # the features describe the stream: a refused window counts too


def test_an_event_sees_the_earlier_events_of_its_own_window_but_never_itself() -> None:
    learner = Learner(small_settings(model={"context_fields": []}))
    first = _window(0, ["u1", "u2", "u1"], ["i1", "i1", "i2"], [1.0, 0.0, 1.0], times=[0, 0, 5])
    realtime = learner.features.realtime
    assert realtime is not None
    rows = learner.features.rows(first.events)
    inputs = realtime.window(learner.features.stream(rows, first.events), first.end_ms).inputs
    activity = inputs[:, 1]  # the user's events before each one
    assert activity.tolist() == [0.0, 0.0, np.float32(math.log1p(1) / 5)]  # the same time does not count
    item_activity = inputs[:, 5]
    assert item_activity.tolist() == [0.0, 0.0, 0.0]
    learner.process(first)
    later = realtime.window(learner.features.stream(rows, first.events), first.end_ms).inputs
    assert later[0, 1] == np.float32(math.log1p(2) / 5)  # once folded, a window counts for later events


def test_counts_round_trip_through_the_learner_state() -> None:
    a = Learner(small_settings())
    ws = list(windows(4, size=300))
    for w in ws[:3]:
        a.process(w)
    b = Learner(small_settings())
    b.restore(a.tensors(), a.state())
    assert_same_tensors(b.tensors(), a.tensors())
    assert "features.user.sums" in a.tensors() and "features.pending.surprise" in a.tensors()
    ra, rb = a.process(ws[3]), b.process(ws[3])
    np.testing.assert_array_equal(ra.probabilities, rb.probabilities)
    assert_same_tensors(b.tensors(), a.tensors())


def _window(
    index: int, users: list[str], items: list[str], labels: list[float], times: list[int] | None = None
) -> Window:
    n = len(users)
    start = 1_700_000_000_000 + index * 60_000
    events = EventBatch(
        user=np.array([hash_id(u) for u in users], np.int64),
        item=np.array([hash_id(i) for i in items], np.int64),
        context=np.empty((n, 0), np.int64),
        label=np.array(labels, np.float32),
        timestamp_ms=start + np.array(times or [0] * n, np.int64),
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
    return Snapshot(meta, encode_payload(arrays(tensors)).tobytes())


def test_a_delta_slices_the_features_by_the_rows_the_window_changed() -> None:
    learner = Learner(small_settings(model={"context_fields": []}))
    stream = _stream(3)
    learner.process(stream[0])
    full = learner.tensors()
    learner.trainer.take_touched()
    layout = {k: tuple(v.shape) for k, v in full.items()}
    window = _window(9, ["u1", "u2"], ["i1", "i1"], [1.0, 0.0])
    learner.process(window)
    touched = learner.trainer.take_touched()
    cut = extract(learner.tensors(copy=False), touched, learner.spec.fields, layout)
    rows = cut["delta.rows/user"]
    assert "features.user.sums" not in cut  # sliced, not whole
    assert len(cut["delta.slice/user/features.user.sums"]) == len(rows) == 2
    restored = newest_state([_snapshot(full, learner, 1, None), _snapshot(cut, learner, 2, 1)])
    assert "features.global.sums" in cut  # not row-aligned: whole
    assert_same_tensors(restored, learner.tensors())


def test_serving_computes_the_learners_inputs_from_the_snapshot() -> None:
    learner = Learner(small_settings(model={"context_fields": []}))
    stream = _stream(4)
    for w in stream[:3]:
        learner.process(w)
    served = _servable(*chain.load([_snapshot(learner.tensors(), learner, 1, None)]))
    subscriber = ModelSubscriber(KafkaSettings(), "t", "m", registry=CollectorRegistry(), follow_input=False)
    subscriber._swap(served)
    nxt = _window(7, ["u3"] * 10, [f"i{k}" for k in range(10)], [0.0] * 10)
    expected = learner.process(nxt).probabilities
    scores = subscriber.score("u3", [f"i{k}" for k in range(10)], at_ms=int(nxt.events.timestamp_ms[0]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(scores) > 0.05  # items with different counts score differently
