"""Event producers for development and benchmarks: synthetic events into the input topic."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from stream_learner.config import KafkaSettings
from stream_learner.ingest.codec import encode_event
from stream_learner.kafka.producer import Deliveries, EventProducer
from stream_learner.tools.auc import StreamingAUC
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

CHUNK = 1_000


@dataclass(frozen=True)
class ProduceStats:
    events: int  # handed to the producer
    seconds: float
    best_auc: float  # AUC of the generator's true probabilities on the drawn labels
    deliveries: Deliveries  # what the broker acknowledged of them

    @property
    def shortfall(self) -> str | None:
        """What was not delivered, in one line; None when every event was."""
        return self.deliveries.shortfall(self.events)


def produce_synthetic(
    kafka: KafkaSettings,
    topic: str,
    events: int,
    rate: float,
    backfill: bool = False,
    config: SyntheticConfig | None = None,
    stop: threading.Event | None = None,
) -> ProduceStats:
    """Produce ``events`` synthetic events at ``rate`` per second of event time.

    Live (default): paced in real time, timestamped with the wall clock. Backfill: as fast as
    possible, with event times spaced 1/rate apart and ending now. Memory stays constant however
    many events (the AUC is streamed). Raises `ConfigError` when the topic does not exist."""
    stream = SyntheticStream(config or SyntheticConfig())
    producer = EventProducer(kafka, topic)
    step_ms = 1000.0 / rate
    started = time.time()
    base_ms = int(started * 1000 - events * step_ms) if backfill else int(started * 1000)
    best = StreamingAUC()
    sent = 0
    while sent < events and not (stop is not None and stop.is_set()):
        n = min(CHUNK, events - sent)
        if not backfill:
            due = started + sent / rate
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
            start_ms = int(time.time() * 1000)
        else:
            start_ms = base_ms + int(sent * step_ms)
        batch = stream.batch(n, start_ms, step_ms)
        for record, user in zip(batch.records(), batch.user_id, strict=True):
            producer.send(user.encode(), encode_event(record))
        best.add(batch.label, batch.probability)
        sent += n
        producer.poll()
    deliveries = producer.close()
    return ProduceStats(sent, time.time() - started, best.value(), deliveries)
