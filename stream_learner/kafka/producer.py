"""A producer of input events (for the synthetic and file producers, demos and benchmarks).

`EventProducer` writes already encoded events to a topic with an idempotent producer, waits for room
when librdkafka's local queue is full, and counts what the broker acknowledged and what failed, so
that a caller can say what was really delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, Producer

from stream_learner.config import KafkaSettings

#: Seconds `close` waits for outstanding deliveries.
FLUSH_TIMEOUT = 60.0


@dataclass
class Deliveries:
    """What the broker acknowledged, what failed (with the first error) and what is still pending."""

    delivered: int = 0
    failed: int = 0
    first_error: str | None = None
    pending: int = 0


class EventProducer:
    """Produces events to one topic and keeps count of their delivery."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.deliveries = Deliveries()
        self._producer = Producer(
            {
                **kafka.client_config(),
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "enable.idempotence": True,
            }
        )

    def send(self, key: bytes | None, value: bytes, timestamp_ms: int | None = None) -> None:
        """Queue one event (with its event time as the record timestamp, when given)."""
        while True:
            try:  # timestamp 0: librdkafka stamps the message with the time it was produced
                self._producer.produce(
                    self.topic, value, key, on_delivery=self._delivered, timestamp=timestamp_ms or 0
                )
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
