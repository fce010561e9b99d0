"""Prometheus metrics of the serving side (`stream_learner.serving.ModelSubscriber`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_learner.metrics.learner import P


class SubscriberMetrics:
    """The subscriber's metrics, on the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.applied = Counter(
            f"{P}subscriber_snapshots_applied",
            "Snapshots the subscriber applied, by kind.",
            ["kind"],
            registry=r,
        )
        self.refused = Counter(
            f"{P}subscriber_snapshots_refused",
            "Snapshots or messages the subscriber refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.model_version = Gauge(f"{P}subscriber_model_version", "Version of the model served.", registry=r)
        self.model_freshness = Gauge(
            f"{P}subscriber_model_freshness_seconds",
            "Newest event time in the model served to the moment it began to be served.",
            registry=r,
        )
