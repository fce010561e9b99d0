"""Topic administration: the topics the learner writes to are created with the configs they need."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream_learner.config import KafkaSettings, Settings

log = logging.getLogger(__name__)


def snapshot_topic_config(settings: Settings) -> dict[str, str]:
    return {
        "cleanup.policy": "delete",
        "retention.ms": "-1",  # by size only: a model stopped for long must still find its last snapshot
        "retention.bytes": str(settings.snapshot.retention_bytes),
        "max.message.bytes": str(settings.snapshot.max_message_bytes + (1 << 20)),
    }


def ensure_topics(settings: Settings, input_partitions: int | None = None, timeout: float = 30.0) -> None:
    """Create the snapshot topic (one partition: versions are ordered) and the dead-letter topic
    when missing; create the input topic only when ``input_partitions`` is given (demo, benchmarks)."""
    admin = AdminClient(settings.kafka.client_config())
    wanted = [
        NewTopic(settings.snapshot.topic, 1, config=snapshot_topic_config(settings)),
        NewTopic(settings.dead_letter.topic, 1),
    ]
    if input_partitions:
        wanted.append(NewTopic(settings.input.topic, input_partitions))
    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in wanted if t.topic not in existing]
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items() if missing else []:
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                raise
    partitions = _partitions_once_visible(admin, settings.snapshot.topic, timeout)
    if partitions != 1:
        raise RuntimeError(
            f"snapshot topic {settings.snapshot.topic} has {partitions} partitions; it must have 1"
        )


def _partitions_once_visible(admin: AdminClient, topic: str, timeout: float) -> int:
    """The topic's partition count, waiting until a just-created topic shows in the metadata with
    leaders (the controller's view reaches the brokers a moment after the creation succeeds)."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic, timeout=timeout).topics[topic]
        ready = (
            meta.error is None and meta.partitions and all(p.leader >= 0 for p in meta.partitions.values())
        )
        if ready or time.monotonic() > deadline:
            return len(meta.partitions)
        time.sleep(0.1)


def delete_topics(kafka: KafkaSettings, names: list[str], timeout: float = 30.0) -> None:
    """Delete the topics that exist and wait until they are gone (deletion completes asynchronously)."""
    admin = AdminClient(kafka.client_config())
    existing = [n for n in names if n in admin.list_topics(timeout=timeout).topics]
    for future in admin.delete_topics(existing, operation_timeout=timeout).values() if existing else []:
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while set(names) & set(admin.list_topics(timeout=timeout).topics) and time.monotonic() < deadline:
        time.sleep(0.2)
