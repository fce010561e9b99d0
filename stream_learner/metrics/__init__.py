"""Prometheus metrics: the only part of the package that imports prometheus_client."""

from stream_learner.metrics.learner import Metrics, MetricsServer, SubscriberMetrics

__all__ = ["Metrics", "MetricsServer", "SubscriberMetrics"]
