"""The input side of Kafka: the event consumer.

`Source` reads every partition of the input topic with manual assignment (one model owns the whole
topic, see `stream_learner.kafka.lease`), or in a distributed job the rank's share of them, starting
from given offsets, and never commits by itself: offsets are committed by the sink together with
the snapshot that includes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from operator import methodcaller
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_learner.config import Settings
from stream_learner.errors import BrokerError
from stream_learner.kafka.clients import client_config

log = logging.getLogger(__name__)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The librdkafka properties of the input consumer (also the raw-consume peer of the benchmarks)."""
    return client_config(
        settings.kafka,
        {
            "group.id": settings.input.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 << 20,
            # Keep a deep prefetch queue: with the default (100k messages) the fetcher stalls and the
            # consume rate drops by ~40% (benchmarks/ingest.py). Memory stays bounded by
            # queued.max.messages.kbytes (64 MiB by default).
            "queued.min.messages": 1_000_000,
            "max.poll.interval.ms": settings.input.max_poll_interval_ms,
            "session.timeout.ms": min(45_000, settings.input.max_poll_interval_ms),
        },
    )


class Source:
    """Consumer of the input topic with manual assignment and offsets."""

    def __init__(self, settings: Settings, reads: Callable[[int], bool] = lambda partition: True) -> None:
        """``reads``: which partitions of the input topic this consumer reads (all by default)."""
        self.topic = settings.input.topic
        self._reads = reads
        self._max_batch = settings.input.max_batch
        self._timeout = settings.kafka.startup_timeout_seconds
        self._consumer = Consumer(consumer_config(settings))
        self.partitions: list[int] = []
        self._positions: dict[int, int] = {}  # next offset to read, per partition
        self._paused = False

    def start(self, resume: dict[int, int]) -> dict[int, int]:
        """Assign the partitions it reads: from ``resume`` where given, else the group's committed offset,
        else the beginning. Returns the start offset of each partition."""
        try:
            return self._start(resume)
        except KafkaException as exc:
            raise BrokerError(f"reading the offsets of {self.topic}: {exc.args[0]}") from None

    def _start(self, resume: dict[int, int]) -> dict[int, int]:
        meta = self._consumer.list_topics(self.topic, timeout=self._timeout)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        self.partitions = sorted(p for p in topic.partitions if self._reads(p))
        committed = self._consumer.committed(
            [TopicPartition(self.topic, p) for p in self.partitions], timeout=self._timeout
        )
        starts: dict[int, int] = {}
        for tp in committed:
            if tp.partition in resume:
                starts[tp.partition] = resume[tp.partition]
            elif tp.offset >= 0:
                starts[tp.partition] = tp.offset
            else:
                low, _ = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=self._timeout
                )
                starts[tp.partition] = low
        self._consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in self.partitions])
        self._positions = dict(starts)
        return starts

    def consume(self, timeout: float) -> tuple[list[Message], list[int]]:
        """Up to max_batch messages, and the partitions whose end was reached (nothing while paused)."""
        if self._paused:
            return [], []
        batch = self._consumer.consume(self._max_batch, timeout)
        problems = list(filter(methodcaller("error"), batch))  # C-level scan: no Python per message
        messages = [m for m in batch if m.error() is None] if problems else batch
        at_end: list[int] = []
        for msg in problems:
            err, partition, offset = msg.error(), msg.partition(), msg.offset()
            assert err is not None
            if err.code() == KafkaError._PARTITION_EOF:
                assert partition is not None and offset is not None
                at_end.append(partition)
                self._advance(partition, offset)
            elif err.fatal():
                raise KafkaException(err)
            else:
                log.warning("consumer error: %s", err)
        if messages:
            self._passed(messages)
        return messages, at_end

    @property
    def positions(self) -> dict[int, int]:
        """The next offset to read, per partition."""
        return self._positions

    def _passed(self, batch: list[Message]) -> None:
        """Move the positions past a consumed batch at once, keeping none of its messages: batches
        kept until the positions were read reached the collector's oldest generation, whose
        collections then traversed every message, holding the GIL."""
        last = dict(zip(map(methodcaller("partition"), batch), batch, strict=True))  # the last of each
        for partition, msg in last.items():
            offset = msg.offset()
            assert offset is not None
            self._advance(partition, offset + 1)

    def _advance(self, partition: int, position: int) -> None:
        self._positions[partition] = max(self._positions.get(partition, 0), position)

    def pause(self) -> None:
        """Hold the input back: `consume` returns nothing until `resume`. librdkafka keeps fetching
        into its bounded local queue (queued.max.messages.kbytes) meanwhile; its own pause would
        discard that queue and fetch it again on resume, stalling the job at every resume."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def lag(self) -> dict[int, int]:
        """Records behind the log end per partition (cached high watermarks: no broker round trip)."""
        lag: dict[int, int] = {}
        positions = self.positions
        for p in self.partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            if high >= 0:
                lag[p] = max(0, high - positions.get(p, 0))
        return lag

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def commit(self, offsets: dict[int, int]) -> None:
        """Synchronous commit (at-least-once mode only; exactly-once commits through the sink)."""
        self._consumer.commit(
            offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=False
        )

    def close(self) -> None:
        self._consumer.close()
