"""Ownership through the real broker: a second instance started for the same model stands by (not
ready, consuming nothing, saying so in its logs) while the first owns the model; when the first stops,
the second takes over from the committed snapshot, and the snapshot history has one model, not two."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from contextlib import ExitStack

from stream_learner.ingest.codec import encode_event
from tests.ingest_support import event, produce
from tests.support import (
    AppThread,
    assert_history_tiles,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_snapshots,
    wait_for,
)

PARTITIONS = 3


def _readyz(metrics_url: str) -> int:
    try:
        with urllib.request.urlopen(metrics_url.replace("/metrics", "/readyz"), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _events(first: int, n: int, t0: int) -> list:
    return [
        (k % PARTITIONS, None, encode_event(event(user_id=f"u{k}", timestamp=t0 + 10 * k)), None)
        for k in range(first, first + n)
    ]


def test_a_second_instance_stands_by_and_takes_over_from_the_committed_snapshot(
    kafka_bootstrap, new_topic, caplog
):
    caplog.set_level(logging.INFO, logger="stream_learner.kafka.lease")
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(kafka_bootstrap, topic, model={"kind": "logistic"})
    group = settings.input.group_id
    t0 = (int(time.time()) - 60) * 1000
    produce(kafka_bootstrap, topic, _events(0, 1000, t0))  # ten seconds of event time

    with ExitStack() as stack:
        first = stack.enter_context(AppThread(settings))
        wait_for(lambda: first.app.ready(), 60, "the first instance to own the model")
        wait_for(
            lambda: sum(committed_offsets(kafka_bootstrap, group, topic, PARTITIONS).values()) > 0,
            60,
            "a commit",
        )
        second = stack.enter_context(AppThread(settings))  # started once the first owns the model
        wait_for(lambda: any("STANDBY" in r.getMessage() for r in caplog.records), 30, "the standby log")
        time.sleep(2)  # the standby keeps standing by
        standby = second.app.registry
        assert (
            _readyz(second.app.summary.metrics_url) == 503 and _readyz(first.app.summary.metrics_url) == 200
        )
        assert standby.get_sample_value("stream_learner_active") == 0
        assert first.app.registry.get_sample_value("stream_learner_active") == 1
        assert standby.get_sample_value("stream_learner_events_consumed_total", {"topic": topic}) == 0
        before_takeover = first.stop()
        handed_over = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)

        wait_for(lambda: second.app.ready(), 60, "the second instance to take over")
        assert (
            standby.get_sample_value("stream_learner_active") == 1
            and _readyz(second.app.summary.metrics_url) == 200
        )
        produce(kafka_bootstrap, topic, _events(1000, 500, t0))
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == ends, 90, "all committed"
        )
        consumed_by_second = standby.get_sample_value(
            "stream_learner_events_consumed_total", {"topic": topic}
        )

    messages = [r.getMessage() for r in caplog.records]
    assert sum("ACTIVE: this instance" in m for m in messages) == 2  # first, then second
    standby_log = next(m for m in messages if m.startswith("STANDBY"))
    assert settings.model.name in standby_log and "owned by instance" in standby_log
    # The second started exactly where the first's committed snapshot ended: no partition was split.
    assert consumed_by_second == sum(ends.values()) - sum(handed_over.values())
    assert before_takeover.events >= sum(handed_over.values())
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert_history_tiles(snapshots, topic, ends)  # one history across both instances
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == 1500
