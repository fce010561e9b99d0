"""The learner's own rate, timed from inside: first batch consumed to the last of N events trained.

`learner_rate` runs an `App` in this process over a backfilled topic. The clock starts when the
source returns its first batch, which is not counted (the rule of raw consume and ingest alone in
benchmarks/ingest.py: the time to fetch that batch is not measured, so neither are its events), and
stops when the learner's cumulative ``events_trained`` reaches N (timed in the training thread, not
by the once-a-second progress callback). A trailing event per
partition, past the last window's end, lets that window close on the watermark, so the figure does
not include the idle timeout that would otherwise close it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Producer

from benchmarks.stages import StageProfile
from stream_learner.config import Settings
from stream_learner.ingest.codec import encode_event
from stream_learner.kafka.clients import client_config
from stream_learner.kafka.lease import Lease
from stream_learner.kafka.source import Source
from stream_learner.learning.learner import Learner
from stream_learner.runtime.app import App


def produce_trailer(settings: Settings, partitions: int) -> None:
    """One event per partition later than every event produced so far by more than a window plus the
    allowed lateness (backfilled events end now)."""
    w = settings.window
    at_ms = int((time.time() + w.size_seconds + w.allowed_lateness_seconds + 1.0) * 1000)
    producer = Producer(client_config(settings.kafka))
    event = {
        "user_id": "trailer",
        "item_id": "trailer",
        "event_type": "view",
        "timestamp": at_ms,
        "label": None,
        "context": {},
    }
    for p in range(partitions):
        producer.produce(settings.input.topic, value=encode_event(event), partition=p)
    assert producer.flush(30) == 0


@contextmanager
def _instrumented(events: int, marks: dict[str, Any], profile: StageProfile | None) -> Iterator[None]:
    consume, process, wait = Source.consume, Learner.process, Lease.wait

    def mark(name: str) -> None:
        if name not in marks:
            marks[name] = time.perf_counter()
            if profile is not None:
                marks[f"{name}_profile"] = profile.mark()

    def timed_consume(self: Source, timeout: float) -> Any:
        out = consume(self, timeout)
        if out[0] and "first" not in marks:
            marks["first_batch"] = len(out[0])
            mark("first")
        return out

    def timed_wait(self: Lease, *args: Any) -> Any:
        owned = wait(self, *args)
        mark("lease")
        return owned

    def timed_process(self: Learner, window: Any) -> Any:
        result = process(self, window)
        if self.events_trained >= events:
            mark("trained")
        return result

    Source.consume, Learner.process = timed_consume, timed_process  # type: ignore[method-assign]
    Lease.wait = timed_wait  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Source.consume, Learner.process, Lease.wait = consume, process, wait  # type: ignore[method-assign]


def learner_rate(
    settings: Settings, events: int, partitions: int, profile: StageProfile | None = None
) -> dict[str, Any]:
    """Events/s of the whole job on ``settings.input.topic``, which holds ``events`` backfilled
    events (a trailer is added here), the start-up time before the first event (from the start, and
    from the lease being acquired); with
    ``profile`` (active around this call), the stage profile between the two marks."""
    produce_trailer(settings, partitions)
    marks: dict[str, Any] = {}
    started = time.perf_counter()
    with _instrumented(events, marks, profile):
        App(settings).run(exit_when_idle=True)
    assert "trained" in marks, f"the learner never trained {events} events"
    out: dict[str, Any] = {
        "events_per_second": (events - marks["first_batch"]) / (marks["trained"] - marks["first"]),
        "startup_seconds": marks["first"] - started,
        "lease_to_first_event_seconds": marks["first"] - marks["lease"],
    }
    if profile is not None:
        out["stages"] = profile.report(events, marks["first_profile"], marks["trained_profile"])
    return out
