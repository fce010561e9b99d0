"""Prometheus metrics of the learner.

Every metric is created on the registry passed in (tests use a fresh `CollectorRegistry` each).
Names follow Prometheus conventions: prefix ``stream_learner_``, base units, counters end in _total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

P = "stream_learner_"


class Metrics:
    """All the learner's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.events_consumed = Counter(
            f"{P}events_consumed", "Input messages consumed.", ["topic"], registry=r
        )
        self.events_invalid = Counter(
            f"{P}events_invalid", "Input messages rejected, by reason.", ["reason"], registry=r
        )
        self.events_late = Counter(f"{P}events_late", "Events for windows already closed.", registry=r)
        self.events_replayed = Counter(
            f"{P}events_replayed",
            "Events re-read after a restart and skipped as already handled.",
            registry=r,
        )
        self.dead_letters = Counter(f"{P}dead_letters", "Messages sent to the dead-letter topic.", registry=r)
        self.dead_letters_truncated = Counter(
            f"{P}dead_letters_truncated",
            "Dead letters cut to fit the dead-letter topic (their size and sha256 in headers).",
            registry=r,
        )
        self.snapshots_refused = Counter(
            f"{P}snapshots_refused",
            "Snapshots the learner's restore skipped because they did not verify, by reason.",
            ["reason"],
            registry=r,
        )
        self.windows_trained = Counter(f"{P}windows_trained", "Windows trained on.", registry=r)
        self.windows_skipped = Counter(
            f"{P}windows_skipped", "Windows not applied to the model, by reason.", ["reason"], registry=r
        )
        self.events_skipped = Counter(
            f"{P}events_skipped",
            "Events of the windows not applied to the model (not trained on), by reason.",
            ["reason"],
            registry=r,
        )
        self.window_events = Histogram(
            f"{P}window_events",
            "Events per closed window.",
            buckets=(10, 100, 1e3, 1e4, 3e4, 1e5, 3e5, 1e6, float("inf")),
            registry=r,
        )
        self.train_loss = Gauge(f"{P}train_loss", "Mean training loss of the last window.", registry=r)
        self.validation_loss = Gauge(
            f"{P}validation_loss", "Prequential log loss of the last window (before training).", registry=r
        )
        self.validation_auc = Gauge(f"{P}validation_auc", "Prequential AUC of the last window.", registry=r)
        self.student_validation_loss = Gauge(
            f"{P}student_validation_loss",
            "Prequential log loss of the last window by the student model ([distill]), before training.",
            ["student"],
            registry=r,
        )
        self.student_validation_auc = Gauge(
            f"{P}student_validation_auc",
            "Prequential AUC of the last window by the student.",
            ["student"],
            registry=r,
        )
        self.learning_rate = Gauge(f"{P}learning_rate", "Current learning rate.", registry=r)
        self.drift_detected = Counter(f"{P}drift_detected", "Drift detections on the loss.", registry=r)
        self.drift_rows_reset = Counter(
            f"{P}drift_rows_reset",
            "Id rows reset after a drift because their own loss rose.",
            ["field"],
            registry=r,
        )
        self.train_step_duration = Histogram(
            f"{P}train_step_duration_seconds",
            "Time to train on one window.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")),
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{P}consumer_lag_records", "Records behind the log end.", ["topic", "partition"], registry=r
        )
        self.watermark = Gauge(f"{P}watermark_timestamp_seconds", "Job event-time watermark.", registry=r)
        self.event_time_lag = Gauge(
            f"{P}event_time_lag_seconds", "Wall clock minus the newest event time seen.", registry=r
        )
        self.snapshot_published = Counter(
            f"{P}snapshot_published", "Snapshots committed to the output topic.", ["kind"], registry=r
        )
        self.snapshot_size = Gauge(
            f"{P}snapshot_size_bytes", "Payload size of the last snapshot.", registry=r
        )
        self.model_freshness = Gauge(
            f"{P}model_freshness_seconds",
            "Newest trained event time to the commit of the snapshot that includes it.",
            registry=r,
        )
        self.model_version = Gauge(f"{P}model_version", "Version of the last committed snapshot.", registry=r)
        self.rebalances = Counter(f"{P}rebalances", "Ownership changes seen.", registry=r)
        self.paused_partitions = Gauge(f"{P}paused_partitions", "Input partitions paused.", registry=r)
        self.active = Gauge(
            f"{P}active",
            "1 when this instance owns the model and can commit; 0 on standby or while commits stall.",
            registry=r,
        )
        self.model_info = Info(
            f"{P}model", "The model this instance learns: name, kind, package version.", registry=r
        )
        self.holdout_loss = Gauge(
            f"{P}holdout_loss",
            "Log loss of the held-out newest events of the last window, after training.",
            registry=r,
        )
        self.holdout_auc = Gauge(
            f"{P}holdout_auc", "AUC of the held-out newest events of the last window.", registry=r
        )
        self.snapshot_last_commit = Gauge(
            f"{P}snapshot_last_commit_timestamp_seconds",
            "Wall-clock time of the last snapshot commit.",
            registry=r,
        )
        self.snapshots_held = Counter(
            f"{P}snapshots_held",
            "Committed snapshots the quality gate held back from serving.",
            registry=r,
        )
        self.gate_held = Gauge(
            f"{P}gate_held",
            "1 while the newest committed snapshot is held by the quality gate (serving keeps an older one).",
            registry=r,
        )
        self.rollbacks = Counter(
            f"{P}rollbacks",
            "Rollback requests handled: applied (published as a new full version) or refused.",
            ["result"],
            registry=r,
        )
        self.control_requests_refused = Counter(
            f"{P}control_requests_refused",
            "Control-topic records the learner skipped, by reason (too large, malformed, not signed as "
            "required, expired, or asking for what it cannot do).",
            ["reason"],
            registry=r,
        )
        self.catchup_mode = Gauge(
            f"{P}catchup_mode",
            "1 while the learner trains in catch-up mode (far behind its input).",
            registry=r,
        )
        self.catchup_eta = Gauge(
            f"{P}catchup_eta_seconds",
            "Estimated time to catch up with the input at the current drain rate (0 when caught up, "
            "+Inf while the lag does not shrink).",
            registry=r,
        )
        self.feature_rows_in_use = Gauge(
            f"{P}feature_rows_in_use", "Rows of a dynamic table held by ids.", ["field"], registry=r
        )
        self.feature_ids_admitted = Counter(
            f"{P}feature_ids_admitted", "Ids given their own row in a dynamic table.", ["field"], registry=r
        )
        self.feature_rows_expired = Counter(
            f"{P}feature_rows_expired", "Dynamic-table rows freed after going unseen.", ["field"], registry=r
        )
        self.feature_rows_pruned = Counter(
            f"{P}feature_rows_pruned",
            "Dynamic-table rows reclaimed from the ids worth least, the table being full (model.prune_by).",
            ["field"],
            registry=r,
        )
        self.feature_ids_unplaced = Counter(
            f"{P}feature_ids_unplaced",
            "New ids that found their dynamic table full (they share the default row).",
            ["field"],
            registry=r,
        )

    def start_at_zero(
        self,
        *,
        topics: Iterable[str],
        invalid_reasons: Iterable[str],
        skip_reasons: Iterable[str],
        snapshot_kinds: Iterable[str],
        refused_reasons: Iterable[str] = (),
        table_fields: Iterable[str] = (),
        reset_fields: Iterable[str] = (),
        rollback_results: Iterable[str] = (),
        control_refusals: Iterable[str] = (),
    ) -> None:
        """Create the labelled counters for every label value they can take, at 0: a series that
        appears only at its first increment hides that increment from ``rate()`` and ``increase()``,
        and a panel or alert on it shows "No data" until then. ``table_fields``: the fields with
        dynamic tables; ``reset_fields``: those whose rows a drift can reset."""
        for counter, values in (
            (self.events_consumed, topics),
            (self.events_invalid, invalid_reasons),
            (self.windows_skipped, skip_reasons),
            (self.events_skipped, skip_reasons),
            (self.snapshot_published, snapshot_kinds),
            (self.snapshots_refused, refused_reasons),
            (self.feature_ids_admitted, table_fields),
            (self.feature_rows_expired, table_fields),
            (self.feature_rows_pruned, table_fields),
            (self.feature_ids_unplaced, table_fields),
            (self.drift_rows_reset, reset_fields),
            (self.rollbacks, rollback_results),
            (self.control_requests_refused, control_refusals),
        ):
            for value in values:
                counter.labels(value)

    def record_tables(self, tables: Mapping[str, Any] | None) -> None:
        """Export a window's dynamic-table counts (`WindowResult.tables`: field -> in_use, admitted,
        expired, pruned, unplaced)."""
        for name, t in (tables or {}).items():
            self.feature_rows_in_use.labels(name).set(t.in_use)
            self.feature_ids_admitted.labels(name).inc(t.admitted)
            self.feature_rows_expired.labels(name).inc(t.expired)
            self.feature_rows_pruned.labels(name).inc(t.pruned)
            self.feature_ids_unplaced.labels(name).inc(t.unplaced)
