"""The input step of the loop: consume a batch, decode it, dead-letter what is invalid, window the
rest; and backpressure, which holds the input back while closed windows wait for training.

`Intake.step` returns the windows the batch closed. A message rejected by the codec (or an event
late for its window, with ``window.late_policy = "dead_letter"``) goes to the dead-letter topic with
its original bytes, key and headers, plus headers that say why and where it came from, cut to fit
the dead-letter topic when it is too large (`stream_learner.runtime.dead_letters`); a rejected
message that was already handled before the last restart (it is below the committed position) is
skipped, not dead-lettered twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from stream_learner.config import Settings
from stream_learner.ingest.codec import Decoder, DecodeResult
from stream_learner.ingest.windowing import Window, Windower
from stream_learner.metrics import Metrics
from stream_learner.runtime.dead_letters import Headers, dead_letter
from stream_learner.runtime.report import Summary

log = logging.getLogger(__name__)


class EventSource(Protocol):
    """The input (`stream_learner.kafka.source.Source`): batches of messages, and pausing."""

    topic: str
    partitions: list[int]

    def consume(self, timeout: float) -> tuple[list[Any], list[int]]: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def lag(self) -> dict[int, int]: ...
    @property
    def paused(self) -> bool: ...


class TrainingQueue(Protocol):
    """The closed windows waiting for training (`stream_learner.runtime.worker.Worker`)."""

    @property
    def queued(self) -> int: ...
    def wait_for_room(self, bound: int, timeout: float) -> bool: ...


class TrainingThread(Protocol):
    """The thread that trains the windows (`stream_learner.runtime.worker.Worker`)."""

    @property
    def queued(self) -> int: ...
    @property
    def busy(self) -> bool: ...
    def wait_idle(self, timeout: float) -> bool: ...


class DeadLetterSink(Protocol):
    """Where rejected messages go (`stream_learner.kafka.sink.Sink`), and the largest it takes."""

    max_dead_letter_bytes: int

    def dead_letter(self, value: bytes | None, key: bytes | None, headers: Headers) -> None: ...


def holds_input(setting: str, device_type: str) -> bool:
    """window.hold_input_while_training: on, off, or (auto) when the model trains on the CPU."""
    return setting == "on" or (setting == "auto" and device_type == "cpu")


class Intake:
    """Consumes, decodes and windows one batch of input per `step`."""

    def __init__(
        self,
        *,
        settings: Settings,
        source: EventSource,
        decoder: Decoder,
        windower: Windower,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        summary: Summary,
        clock: Callable[[], float],
        hold_for: TrainingThread | None = None,
    ) -> None:
        self.settings = settings
        self.hold_for = hold_for  # window.hold_input_while_training: the input waits for its windows
        self.source = source
        self.decoder = decoder
        self.windower = windower
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.summary = summary
        self.clock = clock

    def step(self) -> list[Window]:
        """Consume a batch, dead-letter what is invalid, window the rest; return the closed windows."""
        now = self.clock()
        messages, at_end = self.source.consume(self.settings.input.poll_timeout_seconds)
        if messages:
            self.metrics.events_consumed.labels(self.source.topic).inc(len(messages))
            self.summary.events += len(messages)
        decoded = self.decoder.decode(messages)
        for rej in decoded.rejected:
            self._rejected(rej.message, rej.reason, rej.detail)
        added = self.windower.add(decoded.batch, now)
        for p in at_end:  # after add: a partition's end comes after its last messages
            self.windower.mark_at_end(p)
        if added.late.any():
            self._late(decoded, added.late)
        if added.replayed:
            self.metrics.events_replayed.inc(added.replayed)
        for window in added.windows:
            self.metrics.window_events.observe(len(window))
        return added.windows

    def backpressure(self, training: TrainingQueue, training_events: int = 0) -> None:
        """Hold the input back while ``window.max_queued`` closed windows wait for training, and
        resume as soon as one is taken. With ``hold_for`` (window.hold_input_while_training), also
        while its windows train or wait to (``training_events`` events), as long as less than that
        waits in the input: the polling thread leaves the interpreter lock to the training thread and
        catches up after it, which shortens the time from a window's close to its model; further
        behind, reading goes on (throughput first). While held, wait up to the poll timeout (the
        loop then polls the lease and the sink, and comes back); a held partition never counts as
        idle. Only holds for room count as paused partitions (training cannot keep up)."""
        bound = self.settings.window.max_queued
        full, yielding = training.queued >= bound, self._yields(training_events)
        if full or yielding:
            if not self.source.paused:
                self.source.pause()
                self.windower.mark_paused()
                if full:
                    log.debug("input held back: %d windows wait for training", training.queued)
            timeout = self.settings.input.poll_timeout_seconds
            if full:
                training.wait_for_room(bound, timeout)
            elif self.hold_for is not None:
                self.hold_for.wait_idle(timeout)
            full, yielding = training.queued >= bound, self._yields(training_events)
        if self.source.paused and not (full or yielding):
            self.source.resume()
            self.windower.mark_resumed()
        self.metrics.paused_partitions.set(len(self.source.partitions) if full else 0)

    def _yields(self, training_events: int) -> bool:
        """Whether to hold the input while windows train: on, and less than them waits in the input."""
        t = self.hold_for
        if t is None or not (t.busy or t.queued):
            return False
        return sum(self.source.lag().values()) < training_events

    def _late(self, decoded: DecodeResult, late: np.ndarray) -> None:
        n = int(late.sum())
        self.metrics.events_late.inc(n)
        self.summary.late += n
        if self.settings.window.late_policy == "dead_letter":
            for i in np.flatnonzero(late):
                self._send(decoded.messages[i], "late", "its window was already closed")

    def _rejected(self, message: Any, reason: str, detail: str) -> None:
        if self.windower.replayed(message.partition(), message.offset()):
            self.metrics.events_replayed.inc()  # dead-lettered and committed before the restart
            return
        self.metrics.events_invalid.labels(reason).inc()
        self.summary.invalid += 1
        self._send(message, reason, detail)

    def _send(self, message: Any, reason: str, detail: str) -> None:
        letter = dead_letter(
            value=message.value(),
            key=message.key(),
            original=message.headers(),
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            reason=reason,
            detail=detail,
            max_bytes=self.dead_letters.max_dead_letter_bytes,
        )
        if letter.truncated:
            self.metrics.dead_letters_truncated.inc()
            log.warning(
                "the dead letter of %s[%d]@%d (%s) was cut to fit the dead-letter topic",
                message.topic(), message.partition(), message.offset(), reason,
            )  # fmt: skip
        self.dead_letters.dead_letter(letter.value, letter.key, letter.headers)
        self.metrics.dead_letters.inc()
