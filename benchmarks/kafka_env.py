"""Broker and topics for benchmarks: STREAM_LEARNER_BENCH_BOOTSTRAP, else the local broker."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_learner.config import Settings
from stream_learner.kafka.control import control_topic

REPO = Path(__file__).resolve().parents[1]


def bootstrap() -> str:
    explicit = os.environ.get("STREAM_LEARNER_BENCH_BOOTSTRAP")
    if explicit:
        return explicit
    out = subprocess.run(
        [str(REPO / "deploy/kafka/kafka.sh"), "start"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def new_topic(address: str, prefix: str, partitions: int) -> str:
    """A new topic, once every partition has a leader (a producer created at once may not see it)."""
    name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(name, partitions)])[name].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = admin.list_topics(name, timeout=10).topics.get(name)
        ready = meta is not None and meta.error is None and len(meta.partitions) == partitions
        if ready and meta is not None and all(p.leader >= 0 for p in meta.partitions.values()):
            return name
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} has no leader for every partition after 30 s")


def outputs(settings: Settings) -> list[str]:
    """The topics a learner with ``settings`` creates for itself: snapshots, dead letters, control."""
    return [settings.snapshot.topic, settings.dead_letter.topic, control_topic(settings)]


def delete_topics(address: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": address})
    existing = set(admin.list_topics(timeout=30).topics)
    doomed = [n for n in names if n in existing]
    for future in admin.delete_topics(doomed).values() if doomed else []:
        future.result(30)


def end_offsets(address: str, topic: str, partitions: int) -> dict[int, int]:
    """The next offset of every partition of ``topic`` (its high watermarks)."""
    consumer = Consumer({"bootstrap.servers": address, "group.id": f"bench-{uuid.uuid4().hex[:8]}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()
