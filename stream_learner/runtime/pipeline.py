"""One step of the streaming loop at a time: ingest, backpressure, collect results, report.

The pipeline holds what the loop must know between steps: the open windows (in the windower), the
windows queued or in training (`pending`), and the consume position per partition (in the source).
From these, `frontier` says which offsets the model fully accounts for, which is what may be committed.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_learner.config import Settings
from stream_learner.ingest.codec import Decoder, DecodeResult
from stream_learner.ingest.registry import SchemaRegistry
from stream_learner.ingest.windowing import CountWindower, EventTimeWindower, Window, Windower
from stream_learner.kafka.sink import Sink
from stream_learner.kafka.source import Source
from stream_learner.learning.learner import WindowResult
from stream_learner.metrics import Metrics
from stream_learner.runtime.worker import Output, Worker
from stream_learner.snapshots.publisher import Publisher

log = logging.getLogger(__name__)

REPORT_EVERY = 1.0
DUE_CHECK_EVERY = 0.5


@dataclass
class Summary:
    """What a run did, for the CLI and tests."""

    events: int = 0
    invalid: int = 0
    late: int = 0
    windows_trained: int = 0
    windows_skipped: int = 0
    snapshots: int = 0
    version: int = 0
    first_validation_loss: float = math.nan
    last_validation_loss: float = math.nan
    last_validation_auc: float = math.nan
    lag: int = 0
    metrics_url: str = ""
    events_per_second: float = 0.0


def make_windower(settings: Settings) -> Windower:
    w = settings.window
    if w.kind == "count":
        return CountWindower(idle_timeout_s=w.idle_timeout_seconds, count=w.count)
    return EventTimeWindower(
        idle_timeout_s=w.idle_timeout_seconds,
        size_ms=int(w.size_seconds * 1000),
        lateness_ms=int(w.allowed_lateness_seconds * 1000),
    )


def make_decoder(settings: Settings, clock: Callable[[], float]) -> Decoder:
    i, v = settings.input, settings.validation
    registry = None
    if i.format == "confluent":
        assert i.schema_registry_url is not None  # the settings insist
        password = i.schema_registry_password.get_secret_value() if i.schema_registry_password else ""
        auth = (i.schema_registry_username, password) if i.schema_registry_username else None
        registry = SchemaRegistry(i.schema_registry_url, auth, timeout=i.schema_registry_timeout_seconds)
    return Decoder(
        settings.model.context_fields,
        i.writer_schema,
        v.max_age_seconds,
        v.max_future_skew_seconds,
        clock,
        wire_format=i.format,
        registry=registry,
        max_id_bytes=v.max_id_bytes,
    )


def dead_letter_headers(
    topic: str, partition: int, offset: int, reason: str, detail: str, original: list[Any] | None = None
) -> list[tuple[str, bytes]]:
    """The message's own headers, then why and where from it was rejected."""
    return [
        *(original or []),
        ("stream-learner.reason", reason.encode()),
        ("stream-learner.error", detail[:1000].encode("utf-8", "replace")),
        ("stream-learner.source.topic", topic.encode()),
        ("stream-learner.source.partition", str(partition).encode()),
        ("stream-learner.source.offset", str(offset).encode()),
    ]


@dataclass
class Pipeline:
    settings: Settings
    source: Source
    sink: Sink
    worker: Worker
    publisher: Publisher
    windower: Windower
    decoder: Decoder
    metrics: Metrics
    summary: Summary
    clock: Callable[[], float]
    pending: deque[Window] = field(default_factory=deque)
    flushed: bool = False  # the final state requested at shutdown has been handled
    _snapshot_requested: bool = False
    _waiting_since: float | None = None  # since when something waits for a snapshot
    _due_checked: float = 0.0
    _windows_since_snapshot: int = 0
    _last_report: float = 0.0

    # -- input ---------------------------------------------------------------------------------
    def ingest(self) -> None:
        """Consume a batch, dead-letter what is invalid, window the rest, queue closed windows."""
        now = self.clock()
        messages, at_end = self.source.consume(self.settings.input.poll_timeout_seconds)
        if messages:
            self.metrics.events_consumed.labels(self.source.topic).inc(len(messages))
            self.summary.events += len(messages)
        decoded = self.decoder.decode(messages)
        for rej in decoded.rejected:
            self._dead_letter(rej.message, rej.reason, rej.detail)
        added = self.windower.add(decoded.batch, now)
        for p in at_end:  # after add: a partition's end comes after its last messages
            self.windower.mark_at_end(p)
        if added.late.any():
            self._late(decoded, added.late)
        if added.replayed:
            self.metrics.events_replayed.inc(added.replayed)
        for window in added.windows:
            self._submit(window)

    def _late(self, decoded: DecodeResult, late: np.ndarray) -> None:
        n = int(late.sum())
        self.metrics.events_late.inc(n)
        self.summary.late += n
        if self.settings.window.late_policy == "dead_letter":
            for i in np.flatnonzero(late):
                self._send_dead_letter(decoded.messages[i], "late", "its window was already closed")

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        if self.windower.replayed(message.partition(), message.offset()):
            self.metrics.events_replayed.inc()  # dead-lettered and committed before the restart
            return
        self.metrics.events_invalid.labels(reason).inc()
        self.summary.invalid += 1
        self._send_dead_letter(message, reason, detail)

    def _send_dead_letter(self, message: Any, reason: str, detail: str) -> None:
        """The original bytes, key and headers, plus headers saying why and where from."""
        headers = dead_letter_headers(
            message.topic(), message.partition(), message.offset(), reason, detail, message.headers()
        )
        self.sink.dead_letter(message.value(), message.key(), headers)
        self.metrics.dead_letters.inc()

    def _submit(self, window: Window) -> None:
        self.metrics.window_events.observe(len(window))
        self._windows_since_snapshot += 1
        due = self._windows_since_snapshot >= self.settings.snapshot.every_windows
        if due:
            self._windows_since_snapshot = 0
        self.pending.append(window)
        self.worker.submit(window, snapshot=due)

    def backpressure(self) -> None:
        """Pause input while closed windows queue up beyond the bound; resume when they drain. The
        loop keeps polling meanwhile, so the consumers stay in their groups; a paused partition never
        counts as idle."""
        queued = self.worker.queued
        if queued >= self.settings.window.max_queued and not self.source.paused:
            self.source.pause()
            self.windower.mark_paused()
            log.debug("input paused: %d windows wait for training", queued)
        elif self.source.paused and queued < max(1, self.settings.window.max_queued // 2):
            self.source.resume()
            log.debug("input resumed: %d windows wait for training", queued)
        self.metrics.paused_partitions.set(len(self.source.partitions) if self.source.paused else 0)

    # -- results and commits -------------------------------------------------------------------
    def collect(self, timeout: float | None = None) -> None:
        """Apply the worker's results: metrics, and publish the snapshots it copied."""
        for out in self.worker.outputs(timeout):
            if out.error is not None:
                raise out.error
            if out.window is not None:
                self.pending.popleft()
                assert out.result is not None
                self._record(out.result)
            if out.state is not None and (out.window is not None or self._unpublished()):
                self._publish(out)
            if out.window is None:
                self.flushed = True
                self._snapshot_requested = False

    def _unpublished(self) -> bool:
        """Something is accounted for but not committed: windows trained since the last snapshot, or
        offsets passed without a window (dead letters, late events, replays)."""
        return not self.publisher.up_to_date or self.frontier() != self.publisher.committed_next

    def snapshot_if_due(self) -> None:
        """Publish what would otherwise wait for the next every-N-windows snapshot: at once when the
        input is idle, else once it has waited ``snapshot.interval_seconds``. Looked at twice a second:
        the commit frontier is not worth computing for every batch."""
        now = self.clock()
        if self._snapshot_requested or now - self._due_checked < DUE_CHECK_EVERY:
            return
        self._due_checked = now
        if not self._unpublished():
            self._waiting_since = None
            return
        if self.publisher.up_to_date and self.pending:  # offsets alone wait for the queued windows
            return
        if self._waiting_since is None:
            self._waiting_since = now if self.publisher.up_to_date else self.publisher.unpublished_since
        overdue = now - self._waiting_since >= self.settings.snapshot.interval_seconds
        if overdue or (not self.pending and self.windower.all_idle(now)):
            self.worker.request_snapshot()
            self._snapshot_requested = True

    def _publish(self, out: Output) -> None:
        assert out.state is not None
        windowing = self.windower.state(self.publisher.window_end_ms)
        resume = {"windowing": windowing, "consumed": {str(p): o for p, o in self.source.positions.items()}}
        self.publisher.publish(out.state, self.frontier(), resume, self.source.group_metadata())
        self.summary.snapshots += 1
        self.summary.version = self.publisher.version

    def _record(self, r: WindowResult) -> None:
        m, s = self.metrics, self.summary
        if not math.isnan(r.evaluation.loss):
            m.validation_loss.set(r.evaluation.loss)
            s.last_validation_loss = r.evaluation.loss
            if math.isnan(s.first_validation_loss):
                s.first_validation_loss = r.evaluation.loss
        if not math.isnan(r.evaluation.auc):
            m.validation_auc.set(r.evaluation.auc)
            s.last_validation_auc = r.evaluation.auc
        m.learning_rate.set(r.lr.lr)
        if r.lr.drift:
            m.drift_detected.inc()
        if r.lr.reason:
            log.info("learning rate %.6g: %s", r.lr.lr, r.lr.reason)
        if r.skipped:
            m.windows_skipped.labels(r.skipped).inc()
            s.windows_skipped += 1
        if r.step is not None and r.step.applied:
            m.windows_trained.inc()
            m.train_loss.set(r.step.loss)
            m.train_step_duration.observe(r.step.seconds)
            s.windows_trained += 1
        if r.holdout is not None:
            for gauge, value in ((m.holdout_loss, r.holdout.loss), (m.holdout_auc, r.holdout.auc)):
                if not math.isnan(value):
                    gauge.set(value)
        m.record_tables(r.tables)
        for name, rows in (r.drift_resets or {}).items():
            m.drift_rows_reset.labels(name).inc(rows)
        self.publisher.trained(r)
        log.info(
            "window [%d, %d) events=%d val_loss=%.4f auc=%.4f lr=%.3g %s",
            r.start_ms,
            r.end_ms,
            r.events,
            r.evaluation.loss,
            r.evaluation.auc,
            r.lr.lr,
            f"skipped={r.skipped}" if r.skipped else f"train_loss={r.step.loss:.4f}" if r.step else "",
        )

    def frontier(self) -> dict[int, int]:
        """Per partition, the next offset not yet accounted for by the model: the lowest offset of
        any window still open, queued or in training, else the consume position."""
        low = dict(self.source.positions)
        held = [w.offsets for w in self.pending]
        held.append({p: (lo, lo) for p, lo in self.windower.open_low_offsets().items()})
        for ranges in held:
            for p, (lo, _) in ranges.items():
                low[p] = min(low.get(p, lo), lo)
        return low

    def finish(self, timeout: float = 120.0, keepalive: Callable[[], object] | None = None) -> bool:
        """Shutdown: take no more input, drop windows not started (their offsets stay uncommitted),
        finish the one in training, publish, commit. ``keepalive`` is called while waiting (to keep
        group memberships). Returns whether the final state was published within ``timeout``."""
        dropped = self.worker.drop_queued()
        self.flushed = False
        self.worker.request_snapshot()
        log.info("finishing: %d queued windows dropped (they will be read again), publishing", dropped)
        deadline = self.clock() + timeout
        while not self.flushed and self.clock() < deadline:
            self.collect(timeout=0.5)
            if keepalive is not None:
                keepalive()
        if not self.flushed:
            log.error("the training worker did not finish within %.0f s; nothing more is committed", timeout)
        return self.flushed

    # -- reporting -----------------------------------------------------------------------------
    def report(self, on_progress: Callable[[Summary], None] | None) -> None:
        now = self.clock()
        if now - self._last_report < REPORT_EVERY:
            return
        self._last_report = now
        lag = self.source.lag()
        for p, records in lag.items():
            self.metrics.consumer_lag.labels(self.source.topic, str(p)).set(records)
        self.summary.lag = sum(lag.values())
        if isinstance(self.windower, EventTimeWindower):
            wm = self.windower.watermark_ms(now)
            if wm is not None:
                self.metrics.watermark.set(wm / 1000)
        newest = max((s.max_ts for s in self.windower.partitions.values()), default=0)
        if newest > 0:
            self.metrics.event_time_lag.set(max(0.0, now - newest / 1000))
        if on_progress:
            on_progress(self.summary)

    def idle(self) -> bool:
        """Nothing left to do: input caught up and idle, no window open, queued or in training."""
        return (
            self.windower.all_idle(self.clock()) and not self.windower.open_low_offsets() and not self.pending
        )
