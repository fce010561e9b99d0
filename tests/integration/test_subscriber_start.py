"""A subscriber that cannot serve says why at start, through the real broker: a snapshot topic that
does not exist, a model name with no snapshot on the topic; and with the broker down, `close` is
bounded."""

from __future__ import annotations

import logging
import time
import uuid

from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings
from stream_learner.serving.subscriber import ModelSubscriber
from tests.snapshot_support import (
    SNAPSHOT_TOPIC_CONFIG,
    logistic_spec,
    logistic_state,
    messages,
    meta,
    produce_raw,
)


def _subscriber(bootstrap: str, topic: str, model: str) -> ModelSubscriber:
    return ModelSubscriber(
        KafkaSettings(bootstrap_servers=bootstrap, startup_timeout_seconds=5),
        topic,
        model,
        registry=CollectorRegistry(),
        follow_input=False,
    )


def test_a_missing_topic_is_reported_at_start(kafka_bootstrap, caplog):
    caplog.set_level(logging.WARNING, logger="stream_learner")
    topic = f"absent-{uuid.uuid4().hex}"
    with _subscriber(kafka_bootstrap, topic, "home-feed").start(wait=5) as subscriber:
        assert not subscriber.ready
        assert subscriber.problem is not None and "does not exist" in subscriber.problem
    assert any(
        "no model of home-feed served" in r.getMessage() and topic in r.getMessage() for r in caplog.records
    )


def test_a_wrong_model_name_is_reported_at_start(kafka_bootstrap, new_topic, caplog):
    caplog.set_level(logging.WARNING, logger="stream_learner")
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    spec = logistic_spec()
    produce_raw(
        kafka_bootstrap,
        topic,
        b"home-feed",
        messages(meta("home-feed", 1, "FULL", spec), logistic_state(spec, 0.1)),
    )
    with _subscriber(kafka_bootstrap, topic, "home-fed").start(wait=5) as wrong:
        assert not wrong.ready
        assert wrong.problem is not None and "other models" in wrong.problem, wrong.problem
    with _subscriber(kafka_bootstrap, topic, "home-feed").start(wait=30) as right:
        assert right.ready and right.problem is None and right.version == 1
    assert any("is the model name right?" in r.getMessage() for r in caplog.records)


def test_with_the_broker_down_start_says_so_and_close_is_bounded(caplog):
    caplog.set_level(logging.WARNING, logger="stream_learner")
    subscriber = _subscriber("127.0.0.1:1", "home-feed.snapshots", "home-feed").start(wait=3)
    assert not subscriber.ready and subscriber.problem is not None
    started = time.monotonic()
    subscriber.close(timeout=5)
    assert time.monotonic() - started < 12  # each of its threads waited for at most 5 s
