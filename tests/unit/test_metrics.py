"""The metrics endpoint over real HTTP: /metrics in Prometheus text, /healthz and /readyz."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream_learner.metrics import Metrics, MetricsServer


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def served():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    state = {"ready": False, "healthy": True}
    server = MetricsServer(registry, "127.0.0.1", 0, lambda: state["ready"], lambda: state["healthy"])
    with server:
        yield metrics, state, server.url.removesuffix("/metrics")


def test_metrics_are_served_in_the_text_format(served):
    metrics, _, base = served
    metrics.events_consumed.labels("events").inc(7)
    metrics.model_info.info({"model": "m", "kind": "dnn", "version": "1"})
    status, text = get(f"{base}/metrics")
    assert status == 200
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["stream_learner_events_consumed_total"].value == 7
    assert samples["stream_learner_model_info"].labels == {"model": "m", "kind": "dnn", "version": "1"}


def test_health_and_readiness_follow_their_callbacks(served):
    _, state, base = served
    assert get(f"{base}/healthz")[0] == 200
    assert get(f"{base}/readyz") == (503, "not ready\n")
    state.update(ready=True, healthy=False)
    assert get(f"{base}/readyz")[0] == 200
    assert get(f"{base}/healthz") == (503, "stalled\n")
    assert get(f"{base}/nothing")[0] == 404


def test_every_metric_follows_the_naming_conventions():
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        assert family.name.startswith("stream_learner_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        assert "_ms" not in family.name and "milliseconds" not in family.name  # base units
