"""A producer of input events (for the synthetic and file producers, demos and benchmarks).

`EventProducer` writes already encoded events to a topic with an idempotent producer, waits for room
when librdkafka's local queue is full, and counts what the broker acknowledged and what failed, so
that a caller can say what was really delivered. It checks first that the topic exists: the broker
does not create topics, and librdkafka would otherwise queue every event and fail them one by one
only after its metadata timeout. Memory stays bounded: librdkafka's queue has a size limit (`send`
waits when it is full) and the counts are four numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer

from stream_learner.config import KafkaSettings
from stream_learner.errors import BrokerError, ConfigError
from stream_learner.kafka.clients import client_config

#: Seconds `close` waits for outstanding deliveries.
FLUSH_TIMEOUT = 60.0
#: Seconds to wait for the topic's metadata before giving up on the broker.
METADATA_TIMEOUT = 15.0


@dataclass
class Deliveries:
    """What the broker acknowledged, what failed (with the first error) and what is still pending."""

    delivered: int = 0
    failed: int = 0
    first_error: str | None = None
    pending: int = 0

    def shortfall(self, sent: int) -> str | None:
        """What went wrong with ``sent`` events, in one line; None when every one was delivered."""
        if self.delivered == sent:
            return None
        parts = [f"delivered {self.delivered} of {sent} events"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.pending:
            parts.append(f"{self.pending} unacknowledged when the flush timed out")
        return ", ".join(parts) + (f" (first error: {self.first_error})" if self.first_error else "")


class EventProducer:
    """Produces events to one topic and keeps count of their delivery."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.deliveries = Deliveries()
        self._producer = Producer(
            {
                **client_config(kafka),
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "enable.idempotence": True,
                "queue.buffering.max.kbytes": 64 << 10,  # what waits for the broker: 64 MiB at most
                # One callback for every message: a per-message one is a Python object held by each
                # queued message until its report is served.
                "on_delivery": self._delivered,
            }
        )
        self._check_topic(kafka.bootstrap_servers)

    def _check_topic(self, bootstrap: str) -> None:
        """`ConfigError` naming the topic when it does not exist, `BrokerError` when the brokers do
        not answer within `METADATA_TIMEOUT`."""
        try:
            topic = self._producer.list_topics(self.topic, timeout=METADATA_TIMEOUT).topics.get(self.topic)
        except KafkaException as exc:
            raise BrokerError(f"no answer from the brokers at {bootstrap}: {exc.args[0].str()}") from None
        if topic is None or topic.error is not None:
            code = topic.error.code() if topic is not None else KafkaError.UNKNOWN_TOPIC_OR_PART
            if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise ConfigError("input.topic", f"topic {self.topic} does not exist on {bootstrap}")
            assert topic is not None
            raise BrokerError(f"topic {self.topic} on {bootstrap}: {topic.error.str()}")

    def send(self, key: bytes | None, value: bytes, timestamp_ms: int | None = None) -> None:
        """Queue one event (with its event time as the record timestamp, when given)."""
        while True:
            try:  # timestamp 0: librdkafka stamps the message with the time it was produced
                self._producer.produce(self.topic, value, key, timestamp=timestamp_ms or 0)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain

    def poll(self) -> None:
        """Serve delivery reports."""
        self._producer.poll(0)

    def close(self, timeout: float = FLUSH_TIMEOUT) -> Deliveries:
        """Wait up to ``timeout`` for every queued event; return the final counts."""
        self.deliveries.pending = self._producer.flush(timeout)
        return self.deliveries

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.deliveries.delivered += 1
            return
        self.deliveries.failed += 1
        if self.deliveries.first_error is None:
            self.deliveries.first_error = err.str()
