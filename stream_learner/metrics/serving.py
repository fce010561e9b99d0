"""Prometheus metrics of the serving side (`stream_learner.serving.ModelSubscriber`).

A subscriber lives inside someone else's web service, whose /metrics exports prometheus_client's
default registry; so that is where its metrics go unless a registry is given. One process may
follow several models: every series carries ``model`` (the model followed), and all subscribers on
one registry share one family per metric (registering a name twice would fail).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from stream_learner.metrics.learner import P


class _Families:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.applied = Counter(
            f"{P}subscriber_snapshots_applied",
            "Snapshots the subscriber applied, by model and kind.",
            ["model", "kind"],
            registry=r,
        )
        self.refused = Counter(
            f"{P}subscriber_snapshots_refused",
            "Snapshots or messages the subscriber refused, by model and reason.",
            ["model", "reason"],
            registry=r,
        )
        self.held = Counter(
            f"{P}subscriber_snapshots_held",
            "Snapshots the subscriber did not serve because the learner's quality gate held them.",
            ["model"],
            registry=r,
        )
        self.model_version = Gauge(
            f"{P}subscriber_model_version", "Version of the model served.", ["model"], registry=r
        )
        self.model_freshness = Gauge(
            f"{P}subscriber_model_freshness_seconds",
            "Newest event time in the model served to the moment it began to be served.",
            ["model"],
            registry=r,
        )
        self.features_applied = Counter(
            f"{P}subscriber_feature_events_applied",
            "Input events applied to the real-time features of the model served.",
            ["model"],
            registry=r,
        )
        self.feature_lag = Histogram(
            f"{P}subscriber_feature_lag_seconds",
            "From an event's production (its Kafka timestamp) to its being reflected in the features "
            "served; per applied batch, the lags of ten of its events at evenly spaced ranks.",
            ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.features_rebased = Counter(
            f"{P}subscriber_feature_rebases",
            "Real-time features rebuilt on a new version: from the buffered input, or read again.",
            ["model", "how"],
            registry=r,
        )


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class _OfModel:
    """A labelled metric with its ``model`` label filled in: ``.labels(kind)``."""

    def __init__(self, metric: Any, model: str) -> None:
        self._metric, self._model = metric, model

    def labels(self, *values: str) -> Any:
        return self._metric.labels(self._model, *values)


class SubscriberMetrics:
    """One subscriber's metrics (model ``model``), on ``registry`` (default: prometheus_client's
    default registry). ``kinds`` and ``reasons``: label values created at zero, so that the first
    refusal shows in ``increase()``."""

    def __init__(
        self,
        model: str,
        registry: CollectorRegistry = REGISTRY,
        kinds: Iterable[str] = (),
        reasons: Iterable[str] = (),
    ) -> None:
        with _lock:
            families = _families.get(registry)
            if families is None:
                families = _families[registry] = _Families(registry)
        self.registry = registry
        self.applied = _OfModel(families.applied, model)
        self.refused = _OfModel(families.refused, model)
        self.held = families.held.labels(model)
        self.model_version = families.model_version.labels(model)
        self.model_freshness = families.model_freshness.labels(model)
        self.features_applied = families.features_applied.labels(model)
        self.feature_lag = families.feature_lag.labels(model)
        self.features_rebased = _OfModel(families.features_rebased, model)
        for kind in kinds:
            self.applied.labels(kind)
        for reason in reasons:
            self.refused.labels(reason)
