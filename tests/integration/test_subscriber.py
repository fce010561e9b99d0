"""ModelSubscriber through the real broker: it follows the learner, applies deltas in order, waits for a
full snapshot after a gap, and swaps models atomically for readers."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.learning_support import assert_same_tensors
from tests.snapshot_support import (
    SNAPSHOT_TOPIC_CONFIG,
    logistic_delta,
    logistic_spec,
    logistic_state,
    messages,
    meta,
    produce_raw,
)
from tests.support import AppThread, learner_settings, read_snapshots

EVENTS = 6_000


def test_subscriber_follows_the_learner_and_serves_its_model(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=2)
    settings = learner_settings(
        kafka_bootstrap, topic, snapshot={"every_windows": 1, "full_every": 3, "max_message_bytes": 1 << 18}
    )
    produce_synthetic(settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=5))
    registry = CollectorRegistry()
    served: list[tuple[int, str]] = []
    subscriber = ModelSubscriber(
        settings.kafka,
        settings.snapshot.topic,
        settings.model.name,
        registry=registry,
        on_update=lambda m: served.append((m.version, m.kind)),
    )
    with subscriber.start():  # before the learner exists: it waits for the topic and a first model
        with AppThread(settings, exit_when_idle=True) as run:
            summary = run.join(120)
        assert subscriber.wait_for_version(summary.version, 60), (summary.version, served)
        learner = run.app.learner
        assert learner is not None

        # every version was served, in order, fulls and deltas alike
        snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
        assert [v for v, _ in served] == [s.meta.version for s in snapshots]
        assert {k for _, k in served} == {"FULL", "DELTA"}
        assert (
            registry.get_sample_value(
                "stream_learner_subscriber_snapshots_applied_total",
                {"model": settings.model.name, "kind": "delta"},
            )
            > 0
        )
        of_model = {"model": settings.model.name}
        assert (
            registry.get_sample_value("stream_learner_subscriber_model_version", of_model) == summary.version
        )
        assert registry.get_sample_value("stream_learner_subscriber_model_freshness_seconds", of_model) >= 0

        # the model served is the learner's final model, weight for weight
        ours = {f"model.{k}": v for k, v in learner.trainer.model.state_dict().items()}
        with subscriber._lock.read():
            served = subscriber._served.fold.tensors  # type: ignore[union-attr]
            theirs = {k: v.copy() for k, v in served.items() if k.startswith("model.")}
        assert_same_tensors(ours, theirs)

        # scores agree with the learner's, and recommend ranks the recently active items by them
        recent = list(subscriber.recent_items())
        assert len(recent) > 50 and recent == learner.recent_items()
        at = int(time.time() * 1000)
        scores = subscriber.score("u17", recent, at_ms=at)
        rows = learner.features.rows_for_ids(["u17"] * len(recent), recent)
        assert learner.features.realtime is not None  # the real-time features as of the same time
        inputs = learner.features.realtime.query(rows[:, :2], np.full(len(rows), at))
        expected = learner.trainer.predict(rows, inputs)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
        best = subscriber.recommend("u17", k=10)
        assert [i for i, _ in best] == [recent[j] for j in np.argsort(-scores, kind="stable")[:10]]
        assert [s for _, s in best] == sorted((s for _, s in best), reverse=True)
        assert subscriber.recommend("u17", k=2, candidates=["i1", "i2", "i3"])[0][0] in {"i1", "i2", "i3"}


def test_a_gap_in_the_deltas_waits_for_the_next_full_snapshot(kafka_bootstrap, new_topic):
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    model = f"m-{uuid.uuid4().hex[:8]}"
    spec = logistic_spec()
    registry = CollectorRegistry()

    def publish(version: int, kind: str, value: float) -> None:
        tensors = logistic_state(spec, value) if kind == "FULL" else logistic_delta(spec, value)
        produce_raw(
            kafka_bootstrap, topic, model.encode(), messages(meta(model, version, kind, spec), tensors)
        )

    def bias() -> float:
        served = subscriber._served
        assert served is not None
        return served.fold.tensors["model.bias"].item()

    publish(1, "FULL", 0.1)
    publish(2, "DELTA", 0.2)
    with ModelSubscriber(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, model, registry=registry
    ) as subscriber:
        subscriber.start(wait=30)
        assert subscriber.wait_for_version(2, 30)
        assert bias() == np.float32(-0.4)
        # v3 never arrives (damaged, say): v4 is more than one version past v2, and v5 does not
        # continue the model served; both are refused, and the next full snapshot is served
        publish(4, "DELTA", 0.4)
        publish(5, "DELTA", 0.5)
        publish(6, "FULL", 0.6)
        assert subscriber.wait_for_version(6, 30)

        def refused(reason: str) -> float | None:
            labels = {"model": model, "reason": reason}
            return registry.get_sample_value("stream_learner_subscriber_snapshots_refused_total", labels)

        assert (refused("version"), refused("gap")) == (1, 1)
        assert bias() == np.float32(-1.2)
        publish(7, "DELTA", 0.7)
        assert subscriber.wait_for_version(7, 30)
        assert bias() == np.float32(-1.4)


def test_readers_never_see_a_half_applied_delta(kafka_bootstrap, new_topic):
    """Every pure version scores exactly 0.5; a mix of two versions' rows and bias would not."""
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    model = f"m-{uuid.uuid4().hex[:8]}"
    spec = logistic_spec(rows=4096)
    values: list[bytes] = messages(meta(model, 1, "FULL", spec), logistic_state(spec, 0.0))
    for version in range(2, 80):
        values += messages(meta(model, version, "DELTA", spec), logistic_delta(spec, version / 100))
    scores: list[np.ndarray] = []
    stop = threading.Event()
    users = [f"u{k}" for k in range(64)]

    with ModelSubscriber(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, model) as subscriber:
        produce_raw(kafka_bootstrap, topic, model.encode(), values[:1])
        subscriber.start(wait=30)

        def read() -> None:
            while not stop.is_set():
                for user in users:
                    scores.append(subscriber.score(user, [f"i{k}" for k in range(32)]))

        readers = [threading.Thread(target=read) for _ in range(2)]
        for t in readers:
            t.start()
        produce_raw(kafka_bootstrap, topic, model.encode(), values[1:])
        assert subscriber.wait_for_version(79, 60)
        stop.set()
        for t in readers:
            t.join()
    assert len(scores) > 100
    assert all(np.all(s == np.float32(0.5)) for s in scores)
