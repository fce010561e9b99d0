"""The input side of Kafka: the event consumer and the ownership lease.

`Source` reads every partition of the input topic with manual assignment (one model owns the whole
topic), starting from given offsets, and never commits by itself: offsets are committed by the sink
together with the snapshot that includes them. `Lease` decides which instance owns a model: each
instance joins a consumer group on the (single-partition) snapshot topic, and the one that holds its
partition is the active learner; the others stand by until it goes away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_learner.config import Settings

log = logging.getLogger(__name__)


class Source:
    """Consumer of the input topic with manual assignment and offsets."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.input.topic
        self._max_batch = settings.input.max_batch
        conf = {
            **settings.kafka.client_config(),
            "group.id": settings.input.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 << 20,
        }
        self._consumer = Consumer(conf)
        self.partitions: list[int] = []
        self.positions: dict[int, int] = {}  # next offset to read, per partition
        self._paused = False

    def start(self, resume: dict[int, int]) -> dict[int, int]:
        """Assign all partitions: from ``resume`` where given, else the group's committed offset,
        else the beginning. Returns the start offset of each partition."""
        meta = self._consumer.list_topics(self.topic, timeout=30)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        self.partitions = sorted(topic.partitions)
        committed = self._consumer.committed(
            [TopicPartition(self.topic, p) for p in self.partitions], timeout=30
        )
        starts: dict[int, int] = {}
        for tp in committed:
            if tp.partition in resume:
                starts[tp.partition] = resume[tp.partition]
            elif tp.offset >= 0:
                starts[tp.partition] = tp.offset
            else:
                low, _ = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=30
                )
                starts[tp.partition] = low
        self._consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in self.partitions])
        self.positions = dict(starts)
        return starts

    def consume(self, timeout: float) -> tuple[list[Message], list[int]]:
        """Up to max_batch messages, and the partitions whose end was reached."""
        messages: list[Message] = []
        at_end: list[int] = []
        for msg in self._consumer.consume(self._max_batch, timeout):
            err = msg.error()
            if err is None:
                messages.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.append(msg.partition())
                self.positions[msg.partition()] = max(self.positions.get(msg.partition(), 0), msg.offset())
            elif err.fatal():
                raise KafkaException(err)
            else:
                log.warning("consumer error: %s", err)
        for msg in messages:
            self.positions[msg.partition()] = msg.offset() + 1
        return messages, at_end

    def pause(self) -> None:
        if not self._paused:
            self._consumer.pause([TopicPartition(self.topic, p) for p in self.partitions])
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._consumer.resume([TopicPartition(self.topic, p) for p in self.partitions])
            self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def lag(self) -> dict[int, int]:
        """Records behind the log end per partition (cached high watermarks: no broker round trip)."""
        lag: dict[int, int] = {}
        for p in self.partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            if high >= 0:
                lag[p] = max(0, high - self.positions.get(p, 0))
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


class Lease:
    """Ownership of a model through a consumer group on its single-partition snapshot topic."""

    def __init__(self, settings: Settings, on_change: Callable[[bool], None] | None = None) -> None:
        self.topic = settings.snapshot.topic
        self.group = f"{settings.input.group_id}.owner.{settings.model.name}"
        self._on_change = on_change
        self.owned = False
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": self.group,
                "enable.auto.commit": False,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
            }
        )
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer.incremental_assign(
                [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
            )
            consumer.pause(partitions)  # ownership only: the lease never reads
            self._set(True)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer.incremental_unassign(partitions)
            self._set(False)

    def _set(self, owned: bool) -> None:
        if owned != self.owned:
            self.owned = owned
            log.info("%s model lease (group %s)", "acquired" if owned else "lost", self.group)
            if self._on_change:
                self._on_change(owned)

    def poll(self) -> bool:
        """Keep group membership alive; return whether this instance owns the model."""
        msg = self._consumer.poll(0)
        if msg is not None and msg.error() and msg.error().fatal():
            raise KafkaException(msg.error())
        return self.owned

    def wait(self, should_stop: Callable[[], bool], log_every: float = 30.0) -> bool:
        """Stand by until the lease is ours (True) or a stop is requested (False)."""
        last_log = 0.0
        while not should_stop():
            self._consumer.poll(0.2)
            if self.owned:
                return True
            if time.monotonic() - last_log > log_every:
                log.info("standing by: another instance owns model lease %s", self.group)
                last_log = time.monotonic()
        return False

    def close(self) -> None:
        self._consumer.close()
