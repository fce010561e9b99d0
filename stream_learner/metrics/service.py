"""Prometheus metrics of the scoring service (``stream-learner serve``), and its /metrics app.

Requests: ``stream_learner_serving_request_duration_seconds{model,endpoint,code}``, a histogram of
the time from a whole request read to its answer ready, with buckets fine enough for a p99 of a
few milliseconds. The model: ``stream_learner_serving_model_age_seconds{model}`` (now minus the
newest event time the model served was trained on, read at each scrape: it grows while no new
version comes) and ``stream_learner_serving_ready{model}``; the version served is the subscriber's
``stream_learner_subscriber_model_version{model}``, on the same registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app

from stream_learner.metrics.http import WSGIApp
from stream_learner.metrics.learner import P

#: Endpoints whose series exist from the start (a first slow request shows in ``rate()``).
ENDPOINTS = ("score", "recommend")
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """The service's metrics for model ``model`` on ``registry``; ``newest_event_ms`` and ``ready``
    are read at each scrape."""

    def __init__(
        self,
        model: str,
        registry: CollectorRegistry,
        newest_event_ms: Callable[[], int | None],
        ready: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._model = model
        self._children: dict[tuple[str, int], Any] = {}
        self.requests = Histogram(
            f"{P}serving_request_duration_seconds",
            "Time to answer a request of the scoring service, from the whole request read to the answer "
            "ready, by endpoint and HTTP status code.",
            ["model", "endpoint", "code"],
            buckets=BUCKETS,
            registry=registry,
        )
        for endpoint in ENDPOINTS:
            self.requests.labels(model, endpoint, "200")

        def age() -> float:
            newest = newest_event_ms()
            return float("nan") if newest is None else max(0.0, clock() - newest / 1000)

        Gauge(
            f"{P}serving_model_age_seconds",
            "Now minus the newest event time in the model served (NaN before the first model).",
            ["model"],
            registry=registry,
        ).labels(model).set_function(age)
        Gauge(
            f"{P}serving_ready",
            "1 while a model is served (what /readyz answers), else 0.",
            ["model"],
            registry=registry,
        ).labels(model).set_function(lambda: float(ready()))

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        child = self._children.get((endpoint, code))
        if child is None:
            child = self._children[endpoint, code] = self.requests.labels(self._model, endpoint, str(code))
        child.observe(seconds)


def metrics_app(registry: CollectorRegistry) -> WSGIApp:
    """prometheus_client's /metrics app over ``registry`` (format negotiation, gzip, ``name[]``)."""
    app: WSGIApp = make_wsgi_app(registry)
    return app
