"""Baseline: raw confluent-kafka consume rate vs the learner's end-to-end events/s, same topic, one run.

    .venv/bin/python -m benchmarks.e2e --events 200000

Raw: a bare consumer reads every message of the topic (value() touched, nothing else). Learner: the
full job (decode, validate, window, train, snapshot, commit) from its first consumed event to the
last event trained; startup (lease, restore) is reported separately.
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from benchmarks.kafka_env import bootstrap, delete_topics, new_topic
from benchmarks.results import record
from stream_learner.app import App, Summary
from stream_learner.config import Settings
from stream_learner.producer import produce_synthetic

PARTITIONS = 3


def raw_consume_rate(address: str, topic: str, events: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": address,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 << 20,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen, started = 0, None
    while seen < events:
        batch = consumer.consume(10_000, 1.0)
        if batch and started is None:
            started = time.perf_counter()
        for msg in batch:
            if msg.error() is None:
                msg.value()
                seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return seen / elapsed


def learner_rate(address: str, topic: str, events: int) -> dict[str, float]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": address},
            "input": {"topic": topic, "group_id": name},
            "window": {"size_seconds": 1.0, "allowed_lateness_seconds": 0.0, "idle_timeout_seconds": 1.0},
            "dead_letter": {"topic": f"{name}.dlq"},
            "snapshot": {"topic": f"{name}.snapshots", "every_windows": 10},
            "model": {"name": name},
            "metrics": {"port": 0},
        }
    )
    app = App(settings)
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def progress(s: Summary) -> None:
        now = time.perf_counter()
        if s.events and "first" not in marks:
            marks["first"] = now
        learner = app.learner
        if learner is not None and learner.events_trained >= events and "trained" not in marks:
            marks["trained"] = now

    app.run(exit_when_idle=True, on_progress=progress)
    marks.setdefault("trained", time.perf_counter())
    try:
        return {
            "events_per_second": events / (marks["trained"] - marks["first"]),
            "startup_seconds": marks["first"] - started,
            "settings": {"window_seconds": 1.0, "snapshot_every_windows": 10, "model": settings.model.kind},
        }
    finally:
        delete_topics(address, [settings.snapshot.topic, settings.dead_letter.topic])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    address = bootstrap()
    topic = new_topic(address, "e2e", PARTITIONS)
    try:
        produce_synthetic(
            Settings.model_validate({"kafka": {"bootstrap_servers": address}}).kafka,
            topic,
            args.events,
            rate=10_000,
            backfill=True,
        )
        raw = raw_consume_rate(address, topic, args.events)
        learner = learner_rate(address, topic, args.events)
    finally:
        delete_topics(address, [topic])
    result = {
        "events": args.events,
        "partitions": PARTITIONS,
        "raw_consume_events_per_second": round(raw),
        "learner_events_per_second": round(learner["events_per_second"]),
        "learner_startup_seconds": round(learner["startup_seconds"], 2),
        "learner_vs_raw": round(learner["events_per_second"] / raw, 4),
        "settings": learner["settings"],
    }
    record("e2e", result)
    print(result)


if __name__ == "__main__":
    main()
