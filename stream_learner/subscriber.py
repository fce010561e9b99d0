"""Reading snapshots back from the snapshot topic (client side, and the learner's own restore)."""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from stream_learner.config import KafkaSettings
from stream_learner.errors import SnapshotError
from stream_learner.snapshot import Assembler, Snapshot, decode_chunk

log = logging.getLogger(__name__)


def read_latest(kafka: KafkaSettings, topic: str, model_name: str, timeout: float = 30.0) -> Snapshot | None:
    """The newest complete, verified snapshot of ``model_name`` committed to ``topic``, if any."""
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"stream-learner-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 64 << 20,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        parts = sorted(meta.partitions)
        remaining = set()
        assignment = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                remaining.add(p)
                assignment.append(TopicPartition(topic, p, low))
        consumer.assign(assignment)
        assembler = Assembler()
        latest: Snapshot | None = None
        key = model_name.encode()
        while remaining:
            msg = consumer.poll(timeout)
            if msg is None:
                raise TimeoutError(f"no snapshot data from {topic} within {timeout}s")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition())
                    continue
                raise SnapshotError("kafka", str(msg.error()))
            if msg.key() != key:
                continue
            try:
                snapshot = assembler.add(decode_chunk(msg.value()))
            except SnapshotError as err:
                log.warning(
                    "skipping snapshot data at %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), err
                )
                continue
            if snapshot is not None and snapshot.meta.kind == "FULL":
                latest = snapshot
        return latest
    finally:
        consumer.close()
