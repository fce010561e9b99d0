"""No training-serving skew, through the real broker: a subscriber that has applied the input up to an
offset scores a (user, item) pair as the learner scores the event of that pair at that offset with
the same model version, also after the subscriber restarts mid-stream.

The learner's side is `Learner.process` on a learner restored from the version served (what the job
runs for the window that follows a snapshot): its prequential probabilities, each event scored with the
model before the window and its real-time inputs as of its own time. The subscriber's: `score` at the
event's time, once its input follower has applied every message before the event's offset. Events have
distinct times (a subscriber that applied an event of the same millisecond counts it; the learner does
not). The scores may differ in the last bits only: the learner adds a window's surprise values up in
one cumulative sum, the subscriber event by event, and float addition is not associative.
"""

from __future__ import annotations

import numpy as np
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from stream_learner.ingest.codec import encode_event
from stream_learner.ingest.events import EventBatch, hash_id
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots import chain
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, end_offsets, learner_settings, read_snapshots

USERS, ITEMS, EVENTS = [f"u{k}" for k in range(12)], [f"i{k}" for k in range(6)], 80


def test_the_subscriber_scores_each_event_as_the_learner_does(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=1)
    settings = learner_settings(kafka_bootstrap, topic, snapshot={"every_windows": 1, "full_every": 4})
    produce_synthetic(settings.kafka, topic, 4_000, rate=1000, backfill=True, config=SyntheticConfig(seed=3))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(120)
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    fold, _ = chain.load(snapshots[max(i for i, s in enumerate(snapshots) if s.meta.kind == "FULL") :])
    served = fold.meta.version
    assert served == snapshots[-1].meta.version

    # the events after the snapshot: ids the snapshot knows and new ones, one millisecond apart
    rng = np.random.default_rng(7)
    start = max(s.meta.newest_event_ms for s in snapshots) + 60_000
    rows = [
        (
            USERS[rng.integers(len(USERS))],
            ITEMS[rng.integers(len(ITEMS))],
            "click" if rng.random() < 0.4 else "view",
        )
        for _ in range(EVENTS)
    ]
    first = end_offsets(kafka_bootstrap, topic, 1)[0]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    registry = CollectorRegistry()
    subscriber = ModelSubscriber(
        settings.kafka, settings.snapshot.topic, settings.model.name, registry=registry
    )
    subscriber.start(wait=30)
    scores = []
    try:
        for k, (user, item, kind) in enumerate(rows):
            if k == EVENTS // 2:  # a restart mid-stream: the new subscriber reads again from the snapshot
                subscriber.close()
                subscriber = ModelSubscriber(
                    settings.kafka, settings.snapshot.topic, settings.model.name, registry=CollectorRegistry()
                )
                subscriber.start(wait=30)
            assert subscriber.version == served and subscriber.input is not None
            assert subscriber.input.wait_for({0: first + k}, 30), (k, subscriber.input.position())
            scores.append(float(subscriber.score(user, [item], at_ms=start + k)[0]))
            event = {"user_id": user, "item_id": item, "event_type": kind, "timestamp": start + k}
            producer.produce(
                topic, key=user.encode(), value=encode_event(event | {"label": None, "context": {}})
            )
            assert producer.flush(10) == 0
    finally:
        subscriber.close()
    applied = registry.get_sample_value(
        "stream_learner_subscriber_feature_events_applied_total", {"model": settings.model.name}
    )
    assert applied in (EVENTS // 2 - 1, EVENTS // 2)  # the first subscriber's (the last: if it came in time)

    learner = Learner(settings)
    learner.restore(fold.tensors, fold.meta.state_dict()["learner"])
    n = len(rows)
    events = EventBatch(
        user=np.array([hash_id(u) for u, _, _ in rows], np.int64),
        item=np.array([hash_id(i) for _, i, _ in rows], np.int64),
        context=np.empty((n, 0), np.int64),
        label=np.array([k == "click" for _, _, k in rows], np.float32),
        timestamp_ms=start + np.arange(n, dtype=np.int64),
        partition=np.zeros(n, np.int32),
        offset=first + np.arange(n, dtype=np.int64),
        item_ids=np.array([i for _, i, _ in rows], dtype=object),
    )
    result = learner.process(Window(start, start + n, events, {0: (first, first + n - 1)}, "watermark"))
    assert result.probabilities is not None
    difference = np.abs(np.array(scores) - result.probabilities)
    print(f"largest difference between subscriber and learner: {difference.max():.3g}")
    assert difference.max() < 1e-6
    assert np.ptp(result.probabilities) > 0.05  # the scores differ from event to event
