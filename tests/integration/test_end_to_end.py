"""The whole loop through the real broker: 10,000 synthetic events in, a servable snapshot out."""

from __future__ import annotations

import time

import numpy as np
import torch

from stream_learner.ingest.codec import encode_event
from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.models import ModelSpec, build_model
from stream_learner.snapshots.chain import newest_state
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import (
    AppThread,
    assert_history_tiles,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_snapshots,
    scrape,
    wait_for,
)

EVENTS = 10_000
PARTITIONS = 3


def test_learner_consumes_trains_snapshots_and_commits(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(kafka_bootstrap, topic)
    produce_synthetic(settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=7))
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    assert sum(ends.values()) == EVENTS

    with AppThread(settings) as run:
        group = settings.input.group_id
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == ends,
            120,
            "the group's committed offsets to reach the end offsets",
        )
        metrics = scrape(run.app.summary.metrics_url)
        summary = run.stop()

    assert metrics[("stream_learner_events_consumed_total", (("topic", topic),))] == EVENTS
    assert metrics[("stream_learner_snapshot_published_total", (("kind", "full"),))] >= 1
    assert ("stream_learner_train_loss", ()) in metrics
    assert ("stream_learner_learning_rate", ()) in metrics
    assert all(
        (("stream_learner_consumer_lag_records", (("partition", str(p)), ("topic", topic)))) in metrics
        for p in range(PARTITIONS)
    )
    assert summary.windows_trained >= 9  # ten seconds of event time in one-second windows

    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert_history_tiles(snapshots, topic, ends)
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == EVENTS

    # The payload is safetensors (no pickle); the newest full snapshot with the deltas after it
    # loads into a fresh model that predicts the same.
    newest = snapshots[-1]
    tensors = newest_state(snapshots)
    fresh = build_model(ModelSpec.from_json(newest.meta.spec))
    fresh.load_state_dict(
        {k[len("model.") :]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("model.")}
    )
    fresh.eval()
    learner = run.app.learner
    assert learner is not None
    rows = np.stack([np.arange(500) % f.rows for f in learner.spec.fields], axis=1).astype(np.int64)
    at = np.full(len(rows), int(time.time() * 1000))  # the real-time inputs now, from the snapshot
    served = FeatureMapper.from_spec(fresh.spec, tensors).realtime
    assert served is not None and learner.features.realtime is not None
    inputs = served.query(rows[:, :2], at)
    with torch.no_grad():
        ours = torch.sigmoid(fresh(torch.from_numpy(rows), torch.from_numpy(inputs))).numpy()
    expected = learner.trainer.predict(rows, learner.features.realtime.query(rows[:, :2], at))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_undecodable_messages_are_counted_and_do_not_stop_the_job(kafka_bootstrap, new_topic):
    from confluent_kafka import Producer

    topic = new_topic("events", partitions=1)
    settings = learner_settings(kafka_bootstrap, topic)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    now_ms = int(__import__("time").time() * 1000) - 10_000
    garbage = [b"\x00", b"not avro at all", b"\xff" * 40]
    valid = 0
    for i in range(600):
        if i % 200 == 100:
            producer.produce(topic, value=garbage[i // 200])
            continue
        event = {
            "user_id": f"u{i % 50}",
            "item_id": f"i{i % 30}",
            "event_type": "click" if i % 3 else "view",
            "timestamp": now_ms + i * 10,
            "label": None,
            "context": {},
        }
        producer.produce(topic, value=encode_event(event))
        valid += 1
    producer.flush(30)
    with AppThread(settings) as run:
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, settings.input.group_id, topic, 1) == {0: 600},
            90,
            "all 600 offsets to be committed",
        )
        metrics = scrape(run.app.summary.metrics_url)
        run.stop()
    assert metrics[("stream_learner_events_invalid_total", (("reason", "decode"),))] == len(garbage)
    assert metrics[("stream_learner_events_consumed_total", (("topic", topic),))] == 600
    final = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1]
    assert final.meta.state_dict()["learner"]["events_trained"] == valid


def test_the_snapshot_topic_is_created_with_the_configs_it_needs(kafka_bootstrap, new_topic):
    from confluent_kafka.admin import AdminClient, ConfigResource

    from stream_learner.kafka.admin import ensure_topics

    settings = learner_settings(kafka_bootstrap, new_topic("events"))
    ensure_topics(settings)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.snapshot.topic)
    configs = {k: v.value for k, v in admin.describe_configs([resource])[resource].result(30).items()}
    assert configs["cleanup.policy"] == "delete"  # compaction would keep one chunk per model
    assert configs["retention.ms"] == "-1"
    assert configs["retention.bytes"] == str(settings.snapshot.retention_bytes)
    assert int(configs["max.message.bytes"]) > settings.snapshot.max_message_bytes
    topics = admin.list_topics(timeout=30).topics
    assert len(topics[settings.snapshot.topic].partitions) == 1
    assert settings.dead_letter.topic in topics
