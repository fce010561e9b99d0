"""The publisher's bookkeeping: versions, kinds, contiguous offset ranges, metrics after the commit.

The sink is replaced by a recorder that commits at once (pure logic; the real sink is exercised
against the broker in tests/integration/test_exactly_once.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry

from stream_learner.config import Settings
from stream_learner.learning.learner import WindowResult
from stream_learner.learning.rates import LRUpdate
from stream_learner.learning.trainer import Evaluation
from stream_learner.metrics import Metrics
from stream_learner.runtime.report import Reporter, Summary
from stream_learner.snapshots.format import Assembler, SnapshotMeta, decode_chunk
from stream_learner.snapshots.publisher import Publisher
from stream_learner.snapshots.recovery import Checkpoints
from stream_learner.snapshots.state import StateCopy

SETTINGS = Settings.model_validate({"input": {"topic": "in"}, "model": {"name": "pub-test"}})


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[tuple[list[bytes], bytes, dict[int, int]]] = []
        self.commit = True

    def publish(
        self,
        chunks: Callable[[], Iterable[bytes]],
        key: bytes,
        offsets: dict[int, int],
        group_metadata: object,
        committed: Callable[[], None],
    ) -> None:
        self.published.append((list(chunks()), key, dict(offsets)))
        if self.commit:
            committed()


def _result(start: int, newest: int) -> WindowResult:
    return WindowResult(start, start + 1000, 10, newest, Evaluation(0.5, 0.7, 10), LRUpdate(0.1), None)


def _publisher(sink: RecordingSink, registry: CollectorRegistry, **kw: object) -> Publisher:
    ticks = iter(range(1_000, 10_000)).__next__

    def clock() -> float:
        return float(ticks())

    reporter = Reporter(metrics=Metrics(registry), summary=Summary(), source=None, windower=None, clock=clock)  # type: ignore[arg-type]
    return Publisher(
        settings=SETTINGS,
        sink=sink,
        spec_json='{"kind": "dnn"}',
        clock=clock,
        on_committed=reporter.snapshot_committed,
        **kw,  # type: ignore[arg-type]
    )


def _copy(kind: str) -> StateCopy:
    return StateCopy({"w": np.arange(4.0)}, {"events_trained": 5}, kind)


def _meta(messages: list[bytes]) -> SnapshotMeta:
    snap = None
    assembler = Assembler()
    for m in messages:
        snap = assembler.add(decode_chunk(m))
    assert snap is not None
    return snap.meta


def test_versions_kinds_and_ranges_follow_each_other():
    sink, registry = RecordingSink(), CollectorRegistry()
    pub = _publisher(sink, registry, version=4, committed_next={0: 100, 1: 50})
    frontiers = [{0: 120, 1: 50}, {0: 150, 1: 75}, {0: 151, 1: 90}]
    kinds = ["DELTA", "DELTA", "FULL"]
    for i, (frontier, kind) in enumerate(zip(frontiers, kinds, strict=True)):
        pub.trained(_result(i * 1000, i * 1000 + 999))
        assert not pub.up_to_date
        pub.publish(_copy(kind), frontier, {"consumed": {"0": frontier[0]}}, None)
        assert pub.up_to_date
    metas = [_meta(messages) for messages, key, _ in sink.published]
    assert {key for _, key, _ in sink.published} == {b"pub-test"}
    assert [m.version for m in metas] == [5, 6, 7]
    assert [m.kind for m in metas] == kinds
    assert [m.base_version for m in metas] == [4, 5, None]
    ranges = [{r.partition: (r.first, r.last) for r in m.offsets} for m in metas]
    assert ranges == [
        {0: (100, 119), 1: (50, 49)},
        {0: (120, 149), 1: (50, 74)},
        {0: (150, 150), 1: (75, 89)},
    ]
    assert [offsets for _, _, offsets in sink.published] == frontiers
    state = json.loads(metas[0].state)
    assert (state["learner"], state["consumed"]) == ({"events_trained": 5}, {"0": 120})
    assert state["gate"]["verdict"] == "pass" and state["lineage"]["base"] is None
    assert [json.loads(m.state)["lineage"]["base"] for m in metas[1:]] == [5, 6]
    assert metas[2].window_start_ms == 2000 and metas[2].newest_event_ms == 2999
    assert registry.get_sample_value("stream_learner_snapshot_published_total", {"kind": "delta"}) == 2
    assert registry.get_sample_value("stream_learner_snapshot_published_total", {"kind": "full"}) == 1
    assert registry.get_sample_value("stream_learner_model_version") == 7
    # freshness: commit time (the fake clock, in seconds) minus the newest event time
    assert registry.get_sample_value("stream_learner_model_freshness_seconds") > 0


def test_metrics_and_checkpoint_wait_for_the_commit(tmp_path):
    sink, registry = RecordingSink(), CollectorRegistry()
    sink.commit = False
    checkpoints = Checkpoints(tmp_path, "pub-test")
    pub = _publisher(sink, registry, checkpoint=checkpoints.write)
    pub.trained(_result(0, 999))
    pub.publish(_copy("FULL"), {0: 10}, {}, None)
    assert registry.get_sample_value("stream_learner_snapshot_published_total", {"kind": "full"}) is None
    assert not list(tmp_path.rglob("*.snapshot"))
    sink.commit = True
    pub.trained(_result(1000, 1999))
    pub.publish(_copy("FULL"), {0: 20}, {}, None)
    assert registry.get_sample_value("stream_learner_snapshot_published_total", {"kind": "full"}) == 1
    (chain,) = list(checkpoints.chains())
    assert [s.meta.version for s in chain] == [2]
    assert np.array_equal(chain[0].tensors()["w"], np.arange(4.0))


def test_offsets_alone_move_on_in_a_new_version_with_the_windows_of_the_last():
    """Dead letters or late events past the last window: a version that commits them, keeps the
    model's window range (empty, at its end) and claims no validation metrics."""
    sink = RecordingSink()
    pub = _publisher(sink, CollectorRegistry(), version=4, committed_next={0: 10}, window_end_ms=5000)
    pub.publish(_copy("FULL"), {0: 25}, {}, None)
    meta = _meta(sink.published[0][0])
    assert (meta.version, pub.version, pub.committed_next) == (5, 5, {0: 25})
    assert [(r.first, r.last) for r in meta.offsets] == [(10, 24)]
    assert (meta.window_start_ms, meta.window_end_ms, meta.metrics) == (5000, 5000, {})


def test_a_checkpoint_folder_keeps_the_chain_from_the_newest_full_snapshot(tmp_path):
    sink = RecordingSink()
    checkpoints = Checkpoints(tmp_path, "pub-test")
    pub = _publisher(sink, CollectorRegistry(), checkpoint=checkpoints.write)
    for i, kind in enumerate(["FULL", "DELTA", "FULL", "DELTA", "DELTA"]):
        pub.trained(_result(i * 1000, i * 1000 + 1))
        pub.publish(_copy(kind), {0: i + 1}, {}, None)
    files = sorted(p.name for p in (tmp_path / "pub-test").iterdir())
    assert files == ["v000000000003.snapshot", "v000000000004.snapshot", "v000000000005.snapshot"]
    chains = list(checkpoints.chains())
    assert [[s.meta.version for s in c] for c in chains] == [[3, 4, 5]]
    # a damaged file is refused, and the chain stops before it
    path = tmp_path / "pub-test" / "v000000000005.snapshot"
    path.write_bytes(path.read_bytes()[:-3])
    assert [[s.meta.version for s in c] for c in checkpoints.chains()] == [[3, 4]]


def test_a_delta_with_the_whole_state_is_followed_by_the_whole_as_its_own_version():
    sink, registry = RecordingSink(), CollectorRegistry()
    pub = _publisher(sink, registry, version=4, committed_next={0: 100})
    pub.trained(_result(0, 999))
    copy = StateCopy({"w": np.arange(2.0)}, {"events_trained": 5}, "DELTA", full={"w": np.arange(4.0)})
    assert pub.publish(copy, {0: 120}, {}, None) == [5, 6]
    delta, whole = (_meta(messages) for messages, _, _ in sink.published)
    assert (delta.kind, delta.base_version, whole.kind, whole.base_version) == ("DELTA", 4, "FULL", None)
    assert delta.window_end_ms == whole.window_end_ms == 1000
    assert "validation_loss" in delta.metrics and "validation_loss" not in whole.metrics  # adds no window
    assert [offsets for _, _, offsets in sink.published] == [{0: 120}, {0: 120}]  # the same offsets
    assert pub.publish(_copy("DELTA"), {0: 130}, {}, None) == [7]
