"""``stream-learner produce synthetic`` as a subprocess against the real broker: it exits 0 only when
the broker acknowledged every event, and says what was delivered otherwise."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from tests.support import end_offsets


def produce(bootstrap: str, topic: str, events: int = 500) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    command = ["produce", "synthetic", "--backfill", "--bootstrap-server", bootstrap, "--topic", topic]
    proc = subprocess.run(
        [sys.executable, "-m", "stream_learner", *command, "--events", str(events)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - started


def test_every_event_delivered_is_reported_and_is_on_the_topic(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=2)
    proc, _ = produce(kafka_bootstrap, topic, 700)
    assert proc.returncode == 0, proc.stderr
    assert f"delivered 700 events to {topic}" in proc.stdout
    assert sum(end_offsets(kafka_bootstrap, topic, 2).values()) == 700


def test_a_missing_topic_fails_at_once_naming_it(kafka_bootstrap):
    topic = f"missing-{uuid.uuid4().hex}"
    proc, seconds = produce(kafka_bootstrap, topic)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"topic {topic} does not exist on {kafka_bootstrap}" in proc.stderr
    assert "produced" not in proc.stdout and "delivered" not in proc.stdout
    assert "Traceback" not in proc.stderr
    assert seconds < 30


def test_events_the_broker_refuses_make_a_non_zero_exit(kafka_bootstrap, new_topic):
    # The topic accepts no batch of these events: every delivery fails (MSG_SIZE_TOO_LARGE).
    topic = new_topic("tiny", config={"max.message.bytes": "100"})
    proc, _ = produce(kafka_bootstrap, topic, 300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "delivered 0 of 300 events, 300 failed" in proc.stderr
    assert "too large" in proc.stderr.lower()
    assert sum(end_offsets(kafka_bootstrap, topic, 1).values()) == 0
