"""What the job tells the outside: metrics, the run's `Summary`, and the log.

`Reporter.record` turns each window's `WindowResult` into metrics and a log line; `snapshot_committed`
does the same for a committed snapshot (called on the sink's thread); `report`, once a second, exports
the consumer lag, the watermark and the event-time lag, and calls the progress callback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, get_args

from stream_learner.config import Settings
from stream_learner.errors import SnapshotRefusal
from stream_learner.ingest.events import RejectReason
from stream_learner.ingest.windowing import Windower
from stream_learner.kafka.control import ControlRefusal
from stream_learner.learning.guard import SkipReason
from stream_learner.learning.learner import WindowResult
from stream_learner.metrics import Metrics
from stream_learner.runtime.rollback import RollbackResult
from stream_learner.snapshots.format import SnapshotKind, SnapshotMeta
from stream_learner.snapshots.gate import verdict_of

log = logging.getLogger(__name__)

REPORT_EVERY = 1.0


@dataclass
class Summary:
    """What a run did, for the CLI and tests."""

    events: int = 0
    invalid: int = 0
    late: int = 0
    windows_trained: int = 0
    windows_skipped: int = 0
    events_skipped: int = 0
    snapshots: int = 0
    version: int = 0  # the model's newest version: restored, then published
    restored_version: int | None = None  # the version restored at start; None: a fresh model
    first_validation_loss: float = math.nan
    last_validation_loss: float = math.nan
    last_validation_auc: float = math.nan
    lag: int = 0
    metrics_url: str = ""
    events_per_second: float = 0.0

    def started_from(self, version: int, restored: SnapshotMeta | None) -> None:
        """The model the run starts with: ``restored`` (None: a fresh one), ``version`` the newest."""
        self.version = version
        self.restored_version = restored.version if restored is not None else None

    def line(self) -> str:
        """The run in one line, for the log."""
        start = f"restored v{self.restored_version}" if self.restored_version is not None else "fresh"
        skipped = f", {self.windows_skipped} skipped ({self.events_skipped:,} events)" * bool(
            self.windows_skipped
        )
        loss = f"{self.first_validation_loss:.4f} -> {self.last_validation_loss:.4f}"
        return (
            f"model v{self.version} ({start}, {self.snapshots} snapshots published); "
            f"{self.events:,} events ({self.invalid:,} invalid, {self.late:,} late) at "
            f"{self.events_per_second:,.0f}/s; {self.windows_trained} windows trained{skipped}; "
            f"validation loss {loss}, AUC {self.last_validation_auc:.4f}; lag {self.lag:,} records"
        )


class LagSource(Protocol):
    """The input's lag (`stream_learner.kafka.source.Source`)."""

    topic: str

    def lag(self) -> dict[int, int]: ...


class Reporter:
    """Metrics, summary and log lines of the running job."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        summary: Summary,
        source: LagSource,
        windower: Windower,
        clock: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.summary = summary
        self.source = source
        self.windower = windower
        self.clock = clock
        self._last_report = 0.0

    def record(self, r: WindowResult) -> None:
        """Export the outcome of one window."""
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
            m.events_skipped.labels(r.skipped).inc(r.events)
            s.windows_skipped += 1
            s.events_skipped += r.events
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

    def snapshot_published(self, version: int) -> None:
        """A snapshot was handed to the sink (on the polling thread)."""
        self.summary.snapshots += 1
        self.summary.version = version

    def snapshot_committed(self, meta: SnapshotMeta, size: int) -> None:
        """Export a committed snapshot (called on the sink's thread, right after the commit)."""
        m = self.metrics
        m.snapshot_published.labels(meta.kind.lower()).inc()
        m.snapshot_size.set(size)
        m.model_version.set(meta.version)
        m.model_freshness.set(max(0.0, self.clock() - meta.newest_event_ms / 1000))
        m.snapshot_last_commit.set(self.clock())
        verdict, reason = verdict_of(meta)
        m.gate_held.set(1 if verdict == "held" else 0)
        if verdict == "held":
            m.snapshots_held.inc()
            log.warning("snapshot v%d is held from serving by the quality gate: %s", meta.version, reason)

    def report(self, on_progress: Callable[[Summary], None] | None) -> None:
        """Once every `REPORT_EVERY` seconds: lag, watermark and event-time lag; progress."""
        now = self.clock()
        if now - self._last_report < REPORT_EVERY:
            return
        self._last_report = now
        lag = self.source.lag()
        for p, records in lag.items():
            self.metrics.consumer_lag.labels(self.source.topic, str(p)).set(records)
        self.summary.lag = sum(lag.values())
        wm = self.windower.watermark_ms(now)
        if wm is not None:
            self.metrics.watermark.set(wm / 1000)
        newest = self.windower.newest_event_ms()
        if newest is not None and newest > 0:
            self.metrics.event_time_lag.set(max(0.0, now - newest / 1000))
        if on_progress:
            on_progress(self.summary)


def start_metrics_at_zero(metrics: Metrics, settings: Settings) -> None:
    """Every labelled counter of the learner at 0 for each value its label can take here."""
    ids = ("user", "item")
    metrics.start_at_zero(
        topics=[settings.input.topic],
        invalid_reasons=get_args(RejectReason),
        skip_reasons=get_args(SkipReason),
        snapshot_kinds=[kind.lower() for kind in get_args(SnapshotKind)],
        refused_reasons=get_args(SnapshotRefusal),
        table_fields=ids if settings.model.table == "dynamic" else (),
        reset_fields=ids if settings.lr.policy == "drift" and settings.lr.drift_reset_z > 0 else (),
        rollback_results=get_args(RollbackResult),
        control_refusals=get_args(ControlRefusal),
    )
