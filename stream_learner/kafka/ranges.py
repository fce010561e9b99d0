"""Reading given offset ranges of the input topic again (for replay), or saying why it cannot be.

`read_ranges` returns the committed messages of each partition at offsets ``[first, until)``, in
batches (offset order within a partition). A range that begins before the partition's first retained
offset raises `OffsetsGone`: retention (or a deletion) removed what it needs, and nothing read from
what is left could reproduce it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_learner.config import Settings
from stream_learner.errors import BrokerError, StreamLearnerError
from stream_learner.kafka.clients import client_config

BATCH = 10_000


class OffsetsGone(StreamLearnerError):
    """Offsets to read again are no longer in the topic."""


def read_ranges(settings: Settings, ranges: dict[int, tuple[int, int]]) -> Iterator[list[Message]]:
    """Batches of the input topic's messages at offsets ``[first, until)`` per partition."""
    topic, timeout = settings.input.topic, settings.kafka.startup_timeout_seconds
    wanted = {p: r for p, r in ranges.items() if r[1] > r[0]}
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": f"stream-learner-replay-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",
        }
    )
    try:
        for p, (first, until) in sorted(wanted.items()):
            low, high = _bounds(consumer, TopicPartition(topic, p), timeout)
            if first < low:
                raise OffsetsGone(
                    f"{topic}[{p}]: offsets {first}..{min(until, low) - 1} are gone (the partition now "
                    f"begins at {low}: retention or a deletion removed them)"
                )
            if until > high:
                raise OffsetsGone(
                    f"{topic}[{p}]: offsets up to {until - 1} wanted, but it ends at {high - 1}"
                )
        yield from _read(consumer, topic, wanted, timeout)
    finally:
        consumer.close()


def _bounds(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"reading the offsets of {tp.topic}[{tp.partition}]: {exc}") from None
    return int(low), int(high)


def _read(
    consumer: Consumer, topic: str, wanted: dict[int, tuple[int, int]], timeout: float
) -> Iterator[list[Message]]:
    consumer.assign([TopicPartition(topic, p, first) for p, (first, _) in wanted.items()])
    left = set(wanted)
    deadline = time.monotonic() + timeout
    while left:
        batch: list[Message] = []
        for msg in consumer.consume(BATCH, 0.5):
            p, offset, err = msg.partition(), msg.offset(), msg.error()
            assert p is not None and offset is not None
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    left.discard(p)  # transaction markers may end a range: the log's end ends it
                    continue
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    raise OffsetsGone(f"{topic}[{p}]: {err.str()}")
                raise BrokerError(f"reading {topic}[{p}]: {err.str()}")
            if p not in left:
                continue
            if offset < wanted[p][1]:
                batch.append(msg)
            if offset >= wanted[p][1] - 1:
                left.discard(p)
        if batch:
            deadline = time.monotonic() + timeout
            yield batch
        elif time.monotonic() > deadline:
            raise BrokerError(
                f"no data from {topic} within {timeout:g} s (partitions {sorted(left)} unfinished)"
            )
