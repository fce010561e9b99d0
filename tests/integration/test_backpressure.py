"""Backpressure through the real broker: with a training step slower than half of max.poll.interval.ms
(and several of them back to back, far longer than the interval), closed windows queue up, the input
pauses and the loop keeps polling, so the consumer stays in its group; then the input resumes and not
an event is lost or trained twice."""

from __future__ import annotations

import time

from stream_learner.ingest.codec import encode_event
from stream_learner.learning.learner import Learner
from tests.ingest_support import event, produce
from tests.support import AppThread, committed_offsets, end_offsets, learner_settings, read_snapshots

PARTITIONS = 2
MAX_POLL_INTERVAL_MS = 6_000  # the broker's smallest session timeout
SLOW_STEP = 3.2  # seconds per window: more than half of max.poll.interval.ms
WINDOWS = 4


def test_slow_training_pauses_the_input_and_the_consumer_stays_in_its_group(
    kafka_bootstrap, new_topic, monkeypatch
):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        input={"max_poll_interval_ms": MAX_POLL_INTERVAL_MS, "max_batch": 100},
        window={"max_queued": 1, "idle_timeout_seconds": 1.0},
        snapshot={"every_windows": 2},
        model={"kind": "logistic"},
    )
    t0 = (int(time.time()) - 30) * 1000
    events = 100 * WINDOWS
    produce(
        kafka_bootstrap,
        topic,
        [
            (k % PARTITIONS, None, encode_event(event(user_id=f"u{k}", timestamp=t0 + 10 * k)), None)
            for k in range(events)
        ],
    )
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)

    process = Learner.process

    def slow_process(self: Learner, window):  # test scaffolding: an artificially slow training step
        time.sleep(SLOW_STEP)
        return process(self, window)

    monkeypatch.setattr(Learner, "process", slow_process)
    started = time.monotonic()
    with AppThread(settings, exit_when_idle=True) as run:
        registry = run.app.registry
        paused, owned = set(), [0.0]
        while run.summary is None and run.error is None and time.monotonic() - started < 120:
            paused.add(registry.get_sample_value("stream_learner_paused_partitions"))
            if (now := registry.get_sample_value("stream_learner_active")) != owned[-1]:
                owned.append(now)
            time.sleep(0.05)
        summary = run.join(10)  # raises OwnershipLost had the lease been revoked
    elapsed = time.monotonic() - started

    assert elapsed > WINDOWS * SLOW_STEP > 2 * MAX_POLL_INTERVAL_MS / 1000  # training outlasted the interval
    assert PARTITIONS in paused and 0 in paused  # the input was paused, and resumed
    # The lease was acquired once and kept until the job released it at the end: the consumer
    # stayed in its group through every slow step.
    assert owned in ([0.0, 1.0], [0.0, 1.0, 0.0])
    assert registry.get_sample_value("stream_learner_rebalances_total") == 2  # acquired, released
    assert summary.windows_trained == WINDOWS and summary.late == 0 and summary.invalid == 0
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, PARTITIONS) == ends
    assert (
        read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1].meta.state_dict()["learner"][
            "events_trained"
        ]
        == events
    )
