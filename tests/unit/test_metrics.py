"""The metrics endpoint over real HTTP: /metrics in Prometheus text or OpenMetrics, gzip, HEAD, /healthz
and /readyz, and threads and connections that stay bounded however many clients hang."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import get_args

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from stream_learner.config import KafkaSettings, Settings
from stream_learner.errors import SnapshotRefusal
from stream_learner.ingest.events import RejectReason
from stream_learner.kafka.control import ControlRefusal
from stream_learner.learning.guard import SkipReason
from stream_learner.metrics import Metrics, MetricsServer
from stream_learner.metrics.http import BoundedHTTPServer
from stream_learner.runtime.report import start_metrics_at_zero
from stream_learner.serving import ModelSubscriber


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def kafka_settings() -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never contacted: nothing is started


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


# -- the endpoint as HTTP clients meet it: prometheus_client's handler on a bounded server ----------
def request(base: str, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_head_is_answered_like_get_without_a_body(served):
    metrics, _, base = served
    metrics.events_consumed.labels("events").inc(3)
    status, headers, body = request(base, "/metrics")
    head_status, head_headers, head_body = request(base, "/metrics", "HEAD")
    assert (status, head_status) == (200, 200)
    assert head_body == b""
    assert int(head_headers["Content-Length"]) == len(body)
    assert head_headers["Content-Type"] == headers["Content-Type"]
    for path, code in (("/healthz", 200), ("/readyz", 503), ("/nothing", 404)):
        assert request(base, path, "HEAD")[0] == code, path
    assert request(base, "/metrics", "POST")[0] == 405


def test_gzip_and_openmetrics_are_negotiated(served):
    metrics, _, base = served
    metrics.events_consumed.labels("events").inc(5)
    status, headers, body = request(base, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"stream_learner_events_consumed_total" in gzip.decompress(body)

    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = request(base, "/metrics", headers={"Accept": accept})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    samples = {s.name: s.value for f in openmetrics_families(text) for s in f.samples}
    assert samples["stream_learner_events_consumed_total"] == 5


def test_one_connection_serves_several_requests(served):
    _, _, base = served
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(3):
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
    conn.close()


def test_a_malformed_request_is_refused():
    app_calls = []
    server = BoundedHTTPServer(lambda e, s: app_calls.append(e) or [], "127.0.0.1", 0)
    server.start()
    try:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"NONSENSE\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        server.close()
    assert app_calls == []


def test_500_idle_connections_hold_no_threads_and_do_not_lock_out_a_scrape(served):
    """Issue 9: a thread per connection, no timeout: 500 half-sent requests made 500 threads."""
    _, _, base = served
    host, port = base.removeprefix("http://").split(":")
    assert request(base, "/metrics")[0] == 200  # the app's worker thread exists now
    before = threading.active_count()
    clients = []
    try:
        for i in range(500):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half-sent: no blank line
            clients.append(sock)
        time.sleep(0.5)
        assert threading.active_count() <= before + 1  # at most the pool's second worker
        started = time.monotonic()
        status, _, body = request(base, "/metrics")
        assert status == 200 and b"stream_learner_active" in body
        assert time.monotonic() - started < 2.0
        assert threading.active_count() <= before + 1
    finally:
        for sock in clients:
            sock.close()


def test_connections_beyond_the_limit_close_the_longest_idle_one():
    server = BoundedHTTPServer(lambda e, s: (s("200 OK", []), [b"x"])[1], "127.0.0.1", 0, max_connections=3)
    server.start()
    try:
        idle = [socket.create_connection(server.address, timeout=5) for _ in range(3)]
        wait_until(lambda: server.open_connections == 3)
        newcomer = socket.create_connection(server.address, timeout=5)
        newcomer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert newcomer.recv(100).startswith(b"HTTP/1.1 200")
        assert idle[0].recv(100) == b""  # the oldest idle connection was closed to make room
        assert server.open_connections <= 3
        for sock in [*idle, newcomer]:
            sock.close()
    finally:
        server.close()


def test_a_client_that_sends_nothing_is_disconnected_after_the_timeout():
    server = BoundedHTTPServer(lambda e, s: [], "127.0.0.1", 0, timeout=0.5)
    server.start()
    try:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and then nothing
            started = time.monotonic()
            assert sock.recv(100) == b""
            assert time.monotonic() - started < 3.0
        wait_until(lambda: server.open_connections == 0)
    finally:
        server.close()


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- labelled counters exist at zero; serving metrics on the default registry ---------------------
def test_every_labelled_counter_starts_at_zero_for_every_value_it_can_take():
    settings = Settings.model_validate(
        {"input": {"topic": "events"}, "model": {"table": "dynamic"}, "lr": {"policy": "drift"}}
    )
    registry = CollectorRegistry()
    start_metrics_at_zero(Metrics(registry), settings)
    counters = {
        f.name: [s for s in f.samples if s.name.endswith("_total")]
        for f in registry.collect()
        if f.type == "counter"
    }
    labelled = {name: samples for name, samples in counters.items() if any(s.labels for s in samples)}

    def values(name: str, label: str) -> set[str]:
        assert all(s.value == 0 for s in counters[name]), name
        return {s.labels[label] for s in counters[name]}

    assert values("stream_learner_events_invalid", "reason") == set(get_args(RejectReason))
    assert values("stream_learner_windows_skipped", "reason") == set(get_args(SkipReason))
    assert values("stream_learner_snapshot_published", "kind") == {"full", "delta"}
    assert values("stream_learner_events_consumed", "topic") == {"events"}
    assert values("stream_learner_control_requests_refused", "reason") == set(get_args(ControlRefusal))
    for name in (
        "feature_ids_admitted",
        "feature_rows_expired",
        "feature_rows_pruned",
        "feature_ids_unplaced",
        "drift_rows_reset",
    ):
        assert values(f"stream_learner_{name}", "field") == {"user", "item"}
    # and no labelled counter was forgotten: each has its series before anything happened
    metrics = Metrics(CollectorRegistry())
    with_labels = {
        f"stream_learner_{name}"
        for name, m in vars(metrics).items()
        if isinstance(m, Counter) and m._labelnames
    }
    assert with_labels == set(labelled)


def test_settings_leave_out_the_counters_they_cannot_move():
    registry = CollectorRegistry()
    start_metrics_at_zero(Metrics(registry), Settings.model_validate({"lr": {"policy": "constant"}}))
    assert registry.get_sample_value("stream_learner_feature_ids_admitted_total", {"field": "user"}) is None
    assert registry.get_sample_value("stream_learner_drift_rows_reset_total", {"field": "user"}) is None


def test_a_subscriber_exports_on_the_default_registry_beside_the_web_service(kafka_settings):
    """A web service exports prometheus_client's default registry; a subscriber given no registry is
    in it, each model apart, its refusal reasons at zero."""
    first = ModelSubscriber(kafka_settings, "snapshots", f"m-{uuid.uuid4().hex[:8]}")
    second = ModelSubscriber(kafka_settings, "snapshots", f"m-{uuid.uuid4().hex[:8]}")  # no clash
    assert first.metrics.registry is second.metrics.registry is REGISTRY
    first.metrics.refused.labels("checksum").inc()
    text = generate_latest(REGISTRY).decode()  # what the service's /metrics would show
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }

    def refused(model: str, reason: str) -> float:
        return samples[
            ("stream_learner_subscriber_snapshots_refused_total", (("model", model), ("reason", reason)))
        ]

    assert refused(first.model_name, "checksum") == 1
    assert refused(second.model_name, "checksum") == 0
    for reason in get_args(SnapshotRefusal):
        assert refused(second.model_name, reason) == 0
    applied = (
        "stream_learner_subscriber_snapshots_applied_total",
        (("kind", "delta"), ("model", first.model_name)),
    )
    assert samples[applied] == 0
