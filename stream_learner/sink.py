"""The output side of Kafka: snapshots, dead letters, and the commit of input offsets.

Exactly-once (default): one transactional producer whose id is derived from the model name, so a
newer instance fences an older one. A transaction is opened by the first dead letter or snapshot
after a commit and closed by the next snapshot, together with the input offsets that snapshot
includes (`send_offsets_to_transaction`): in the committed history the model, its dead letters and
its offsets move as one. At-least-once: an idempotent producer; the snapshot is flushed and
acknowledged first, then the offsets are committed, so a crash between the two replays events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 60.0


def transactional_id(settings: Settings) -> str:
    return f"stream-learner.{settings.input.group_id}.{settings.model.name}"


class Sink:
    """Producer of snapshot chunks and dead letters, and the committer of input offsets."""

    def __init__(self, settings: Settings, commit_offsets: Callable[[dict[int, int]], None]) -> None:
        self.exactly_once = settings.delivery.mode == "exactly_once"
        self.snapshot_topic = settings.snapshot.topic
        self.dead_letter_topic = settings.dead_letter.topic
        self.input_topic = settings.input.topic
        self._commit_offsets = commit_offsets
        conf: dict[str, object] = {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "message.max.bytes": settings.snapshot.max_message_bytes + (1 << 20),
            "linger.ms": 5,
        }
        if self.exactly_once:
            conf["transactional.id"] = transactional_id(settings)
            conf["transaction.timeout.ms"] = settings.delivery.transaction_timeout_ms
        self._producer = Producer(conf)
        self._in_transaction = False
        self._errors: list[KafkaError] = []

    def start(self) -> None:
        """Register the transactional id, fencing any older instance of this model."""
        if self.exactly_once:
            try:
                self._producer.init_transactions(60)
            except KafkaException as exc:
                raise _ownership_or(exc) from exc

    def _begin(self) -> None:
        if self.exactly_once and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(err)

    def dead_letter(self, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Send one rejected input message, as it was, with headers saying why."""
        self._begin()
        self._produce(self.dead_letter_topic, value, key, headers)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                )
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def publish(
        self, chunks: list[bytes], key: bytes, offsets: dict[int, int], group_metadata: object
    ) -> None:
        """Publish a snapshot and commit the input offsets it includes (next offset per partition)."""
        self._begin()
        for chunk in chunks:
            self._produce(self.snapshot_topic, chunk, key)
        if self.exactly_once:
            tps = [TopicPartition(self.input_topic, p, o) for p, o in offsets.items()]
            try:
                self._producer.send_offsets_to_transaction(tps, group_metadata, FLUSH_TIMEOUT)
                self._producer.commit_transaction(FLUSH_TIMEOUT)
            except KafkaException as exc:
                self._in_transaction = False
                raise _ownership_or(exc) from exc
            self._in_transaction = False
            self._errors.clear()
        else:
            remaining = self._producer.flush(FLUSH_TIMEOUT)
            if remaining or self._errors:
                errors, self._errors = self._errors, []
                raise KafkaException(errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT))
            self._commit_offsets(offsets)

    def poll(self) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(0)

    def close(self) -> None:
        """Abort what was not committed (it will be produced again on replay) and flush."""
        if self._in_transaction:
            try:
                self._producer.abort_transaction(FLUSH_TIMEOUT)
            except KafkaException as exc:
                log.warning("could not abort the open transaction: %s", exc)
            self._in_transaction = False
        self._producer.flush(FLUSH_TIMEOUT)


def _ownership_or(exc: KafkaException) -> Exception:
    """A fenced producer means another instance took over this model."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ):
        return OwnershipLost(f"fenced by a newer instance: {err.str()}")
    return exc
