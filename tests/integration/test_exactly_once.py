"""Exactly-once through the real broker: snapshots and input offsets commit in one transaction, a new
instance fences the old one and aborts its open transaction, a restart restores the newest committed
chain (reading the snapshot topic backwards from its end, or the local checkpoint folder), and the
at-least-once mode works where transactions are not wanted."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer

from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost
from stream_learner.ingest.windowing import make_windower
from stream_learner.kafka.admin import ensure_topics
from stream_learner.kafka.sink import Sink
from stream_learner.learning.learner import Learner
from stream_learner.snapshots.chain import newest_state
from stream_learner.snapshots.format import PartitionRange, SnapshotMeta
from stream_learner.snapshots.log import SnapshotLog
from stream_learner.snapshots.recovery import restore
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.learning_support import assert_same_tensors
from tests.snapshot_support import logistic_delta, logistic_state, messages, meta, produce_raw
from tests.support import (
    AppThread,
    assert_history_tiles,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_all,
    read_snapshots,
)

PARTITIONS = 2


def test_a_restart_restores_the_newest_chain_and_every_event_is_trained_once(
    kafka_bootstrap, new_topic, tmp_path, caplog
):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        snapshot={"every_windows": 1, "full_every": 3, "checkpoint_dir": str(tmp_path)},
        train={"device": "cpu", "deterministic": True},
    )
    caplog.set_level(logging.INFO, logger="stream_learner.snapshots.recovery")
    produce_synthetic(settings.kafka, topic, 4000, rate=1000, backfill=True, config=SyntheticConfig(seed=1))
    first_ended = time.time()
    with AppThread(settings, exit_when_idle=True) as run:
        first = run.join(120)
    # the second batch's event times (3 s, ending when produced) begin after the first's last window
    time.sleep(max(0.0, first_ended + 3 + 1.5 - time.time()))
    produce_synthetic(settings.kafka, topic, 3000, rate=1000, backfill=True, config=SyntheticConfig(seed=2))
    with AppThread(settings, exit_when_idle=True) as run:
        second = run.join(120)
        learner = run.app.learner
    assert learner is not None
    restored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restored model")]
    assert len(restored) == 1 and f"v{first.version} " in restored[0] and "checkpoint folder" in restored[0]

    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert_history_tiles(snapshots, topic, ends)
    assert {s.meta.kind for s in snapshots} == {"FULL", "DELTA"}
    assert snapshots[-1].meta.version == second.version
    assert first.late == second.late == 0
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == 7000
    # the input offsets committed are exactly those the last snapshot resumes from
    resume = {p: nxt for (_, p), nxt in snapshots[-1].meta.resume_offsets().items()}
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, PARTITIONS) == resume == ends
    # the committed chain reproduces the learner's final state exactly
    assert_same_tensors(newest_state(snapshots), learner.tensors())
    # after the first, a full snapshot comes right after the delta of the same state (it adds no
    # window): subscribers that follow take the delta, new ones start from the full
    by_version = {s.meta.version: s for s in snapshots}
    fulls = [s for s in snapshots if s.meta.kind == "FULL" and s.meta.version > 1]
    assert fulls
    for full in fulls:
        before = by_version[full.meta.version - 1]
        assert before.meta.kind == "DELTA" and before.meta.window_end_ms == full.meta.window_end_ms
        through_delta = newest_state([s for s in snapshots if s.meta.version < full.meta.version])
        assert_same_tensors(through_delta, full.tensors())

    # a checkpoint folder that ends before the topic is passed over for the topic
    newest = max((tmp_path / settings.model.name).glob("*.snapshot"))
    newest.unlink()
    caplog.clear()
    again = restore(settings, lambda: (Learner(settings), make_windower(settings)))
    assert again.version == second.version and again.resume == ends
    messages_ = [r.getMessage() for r in caplog.records]
    assert any("checkpoint folder ends at" in m for m in messages_)
    assert any(m.startswith("restored model") and settings.snapshot.topic in m for m in messages_)


def _read_all(bootstrap: str, topic: str, isolation: str) -> list[bytes]:
    return [m.value() for m in read_all(bootstrap, topic, isolation=isolation)]


def test_snapshot_offsets_and_dead_letters_commit_together_and_a_new_instance_fences_the_old(
    kafka_bootstrap, new_topic
):
    topic = new_topic("events", partitions=1)
    settings = learner_settings(kafka_bootstrap, topic)
    ensure_topics(settings)
    group = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.input.group_id})
    metadata = group.consumer_group_metadata()
    key = settings.model.name.encode()
    spec_meta = meta(settings.model.name, 1)

    def snapshot(version: int) -> list[bytes]:
        return messages(
            SnapshotMeta(**{**vars(spec_meta), "version": version}), {"w": np.zeros(3, np.float32)}
        )

    def publish(sink: Sink, version: int, offset: int) -> threading.Event:
        done = threading.Event()
        sink.publish(lambda: snapshot(version), key, {0: offset}, metadata, done.set)
        return done

    old = Sink(settings, commit_offsets=lambda offsets: None)
    old.start()
    assert publish(old, 1, 5).wait(30)
    old.dead_letter(b"bad event", None, [("stream-learner.reason", b"decode")])  # opens a transaction
    for _ in range(100):  # ... whose record reaches the log, uncommitted
        if _read_all(kafka_bootstrap, settings.dead_letter.topic, "read_uncommitted"):
            break
    else:
        pytest.fail("the dead letter never reached the log")

    new = Sink(settings, commit_offsets=lambda offsets: None)
    new.start()  # same transactional id: fences the old producer and aborts its transaction
    publish(old, 2, 9)  # the zombie tries to go on
    with pytest.raises(OwnershipLost):
        for _ in range(300):
            old.poll()
            threading.Event().wait(0.1)
    assert _read_all(kafka_bootstrap, settings.dead_letter.topic, "read_committed") == []
    assert [s.meta.version for s in read_snapshots(kafka_bootstrap, settings.snapshot.topic)] == [1]
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, 1) == {0: 5}

    new.dead_letter(b"bad event", None, [("stream-learner.reason", b"decode")])
    assert publish(new, 2, 9).wait(30)
    new.close(30)
    old.close(30)  # the fenced zombie gives up its work; nothing is raised twice
    assert [s.meta.version for s in read_snapshots(kafka_bootstrap, settings.snapshot.topic)] == [1, 2]
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, 1) == {0: 9}
    assert _read_all(kafka_bootstrap, settings.dead_letter.topic, "read_committed") == [b"bad event"]
    group.close()


def _versioned(model: str, version: int, kind: str, offset: int) -> SnapshotMeta:
    m = meta(model, version, kind)
    return SnapshotMeta(**{**vars(m), "offsets": (PartitionRange("in", 0, offset, offset + 9),)})


def test_restore_reads_back_from_the_end_and_passes_over_a_corrupt_full_snapshot(kafka_bootstrap, new_topic):
    """40 versions, full every 5th; the newest full (v36) is corrupt. The restore reads only the end of
    the topic, refuses v36, restores v31 + v32..v35, and numbers the next version above v40."""
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "input": {"topic": "in"},
            "snapshot": {"topic": new_topic("snapshots", 1, {"max.message.bytes": str(2 << 20)})},
            "model": {
                "name": f"m-{uuid.uuid4().hex[:8]}",
                "kind": "logistic",
                "user_buckets": 64,
                "item_buckets": 64,
                "count_features": False,  # the hand-written snapshots hold no counts
            },
            "train": {"device": "cpu"},
        }
    )
    learner = Learner(settings)
    spec = learner.spec
    name = settings.model.name
    values: list[bytes] = []
    for v in range(1, 41):
        kind = "FULL" if v % 5 == 1 else "DELTA"
        tensors = logistic_state(spec, v / 100) if kind == "FULL" else logistic_delta(spec, v / 100)
        m = SnapshotMeta(**{**vars(_versioned(name, v, kind, v * 10)), "spec": spec.to_json()})
        chunked = messages(m, tensors, max_bytes=8 << 10)  # several chunks each
        if v == 36:
            chunked[-1] = chunked[-1][:-8] + b"\x00" * 8  # the payload's last bytes: checksum mismatch
        values += chunked
    produce_raw(kafka_bootstrap, settings.snapshot.topic, name.encode(), values)

    read: list[int] = []

    class Counting(SnapshotLog):
        def _messages(self, start, end, stop=None):
            for msg in super()._messages(start, end, stop):
                read.append(msg.offset())
                yield msg

    with Counting(settings.kafka, settings.snapshot.topic, name) as log:
        chain = next(log.chains())
        assert [s.meta.version for s in chain] == [31, 32, 33, 34, 35]
        assert log.newest_version == 40
    assert min(read) > len(values) // 2, "read far more of the topic than the newest chain"

    restored = restore(settings, lambda: (learner, make_windower(settings)))
    assert restored.version == 40  # the next snapshot is v41 ...
    assert restored.since_full is None  # ... and a full one: v36..v40 are not in the model
    assert restored.resume == {0: 35 * 10 + 10}
    assert learner.trainer.model.bias.item() == pytest.approx(-0.7)


def test_at_least_once_mode_commits_after_the_snapshot_is_acknowledged(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(kafka_bootstrap, topic, delivery={"mode": "at_least_once"})
    produce_synthetic(settings.kafka, topic, 3000, rate=1000, backfill=True, config=SyntheticConfig(seed=3))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(120)
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert_history_tiles(snapshots, topic, ends)
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == 3000
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, PARTITIONS) == ends
