"""Prometheus metrics: the only part of the package that imports prometheus_client.

Every metric is created on the registry passed in (tests use a fresh `CollectorRegistry` each).
Names follow Prometheus conventions: prefix ``stream_learner_``, base units, counters end in _total.
"""

from prometheus_client import REGISTRY, CollectorRegistry

from stream_learner.metrics.learner import Metrics
from stream_learner.metrics.server import MetricsServer
from stream_learner.metrics.service import ServiceMetrics, metrics_app
from stream_learner.metrics.serving import SubscriberMetrics

__all__ = [
    "REGISTRY",
    "CollectorRegistry",
    "Metrics",
    "MetricsServer",
    "ServiceMetrics",
    "SubscriberMetrics",
    "metrics_app",
]
