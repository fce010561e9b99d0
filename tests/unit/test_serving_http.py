"""The scoring service's HTTP API without a broker: a scorer stands in for the subscriber."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_learner.serving.api import Limits
from stream_learner.serving.http import MAX_BODY, ScoringServer


@dataclass
class FakeMeta:
    newest_event_ms: int


@dataclass
class FakeScorer:
    """Scores item i as i / 100 + version / 1000; ``swap_during`` moves to the next version while
    that many requests are being scored (a swap racing a request)."""

    model_name: str = "feed"
    version: int | None = None
    problem: str | None = "the snapshot topic feed.snapshots does not exist (yet); waiting for one"
    swap_during: int = 0
    calls: list[tuple[str, list[str], Any, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.version is not None

    @property
    def meta(self) -> FakeMeta | None:
        return None if self.version is None else FakeMeta(newest_event_ms=1_000)

    def recent_items(self) -> tuple[str, ...]:
        return ("1", "7", "3")

    def score(
        self,
        user_id: str,
        item_ids: Sequence[str],
        context: Mapping[str, str] | None = None,
        at_ms: int | None = None,
    ) -> np.ndarray:
        if self.version is None:
            raise LookupError("no model")
        self.calls.append((user_id, list(item_ids), context, at_ms))
        scores = np.array([int(i) / 100 + self.version / 1000 for i in item_ids], np.float32)
        if self.swap_during:
            self.swap_during -= 1
            self.version += 1
        return scores

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        pool = list(candidates if candidates is not None else self.recent_items())
        scores = self.score(user_id, pool, context)
        best = np.argsort(-scores, kind="stable")[:k]
        return [(pool[i], float(scores[i])) for i in best]


@pytest.fixture
def scorer() -> FakeScorer:
    return FakeScorer()


@pytest.fixture
def service(scorer: FakeScorer) -> Iterator[ScoringServer]:
    server = ScoringServer(scorer, "127.0.0.1", 0, CollectorRegistry(), Limits(max_id_bytes=16, max_items=50))
    with server:
        yield server


def call(
    service: ScoringServer, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    host, port = service.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    content = json.loads(payload) if response.getheader("Content-Type") == "application/json" else payload
    return response.status, dict(response.getheaders()), content


def test_not_ready_until_a_model_is_served_then_ready(service: ScoringServer, scorer: FakeScorer) -> None:
    assert call(service, "GET", "/healthz")[:3:2] == (200, {"status": "ok"})
    status, _, body = call(service, "GET", "/readyz")
    assert status == 503 and body["ready"] is False and "does not exist" in body["problem"]
    status, headers, body = call(service, "POST", "/score", {"user": "u", "items": ["1"]})
    assert status == 503 and "does not exist" in body["error"] and headers["Retry-After"] == "1"
    scorer.version = 4
    assert call(service, "GET", "/readyz")[::2] == (200, {"ready": True, "model": "feed", "version": 4})


def test_score_answers_every_item_in_order_with_the_version(
    service: ScoringServer, scorer: FakeScorer
) -> None:
    scorer.version = 7
    request = {"user": "u1", "items": ["3", "1", "2"], "context": {"device": "ios", "hour": None}}
    status, _, body = call(service, "POST", "/score", {**request, "at_ms": 1234})
    assert status == 200
    assert body["model"] == "feed" and body["version"] == 7
    assert body["scores"] == pytest.approx([0.037, 0.017, 0.027], abs=1e-6)
    assert scorer.calls[-1] == ("u1", ["3", "1", "2"], {"device": "ios"}, 1234)  # null: missing


def test_recommend_from_candidates_or_the_recent_items(service: ScoringServer, scorer: FakeScorer) -> None:
    scorer.version = 2
    status, _, body = call(service, "POST", "/recommend", {"user": "u", "k": 2})
    assert status == 200 and body["version"] == 2
    assert [entry["item"] for entry in body["items"]] == ["7", "3"]
    status, _, body = call(service, "POST", "/recommend", {"user": "u", "candidates": ["4", "9"]})
    assert [entry["item"] for entry in body["items"]] == ["9", "4"]
    assert body["items"][0]["score"] == pytest.approx(0.092, abs=1e-6)


def test_the_version_answered_is_the_one_that_scored(service: ScoringServer, scorer: FakeScorer) -> None:
    """A swap during scoring: the request is scored again, and the answer names the new version."""
    scorer.version, scorer.swap_during = 3, 2
    status, _, body = call(service, "POST", "/score", {"user": "u", "items": ["1"]})
    assert status == 200 and body["version"] == 5
    assert body["scores"] == pytest.approx([0.015], abs=1e-6)
    assert len(scorer.calls) == 3


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"items": ["1"]}', "user must be a non-empty string"),
        (b'{"user": "", "items": ["1"]}', "user must be a non-empty string"),
        (b'{"user": "u", "items": []}', "items must be a non-empty list"),
        (b'{"user": "u", "items": "1"}', "items must be a non-empty list"),
        (b'{"user": "u", "items": ["1", 2]}', "items[1] must be a non-empty string"),
        (b'{"user": "u", "item": ["1"]}', "unknown fields ['item']"),
        (b'{"user": "u", "items": ["1"], "context": {"d": 1}}', "context.d must be a string"),
        (b'{"user": "u", "items": ["1"], "context": ["d"]}', "context must be an object"),
        (b'{"user": "u", "items": ["1"], "at_ms": -1}', "at_ms must be a non-negative integer"),
        (b'{"user": "u", "items": ["1"], "at_ms": true}', "at_ms must be a non-negative integer"),
        (b'{"user": "a-very-long-user-id-indeed", "items": ["1"]}', "user is longer than 16 bytes"),
        (json.dumps({"user": "u", "items": ["1"] * 51}).encode(), "items has 51 ids; at most 50"),
    ],
)
def test_bad_score_requests_get_400_with_the_reason(
    service: ScoringServer, scorer: FakeScorer, raw: bytes, reason: str
) -> None:
    scorer.version = 1
    status, _, body = call(service, "POST", "/score", raw=raw)
    assert status == 400 and reason in body["error"], body
    assert not scorer.calls


@pytest.mark.parametrize(
    "request_,reason",
    [
        ({"user": "u", "k": 0}, "k must be an integer from 1 to 50"),
        ({"user": "u", "k": "3"}, "k must be an integer"),
        ({"user": "u", "candidates": []}, "candidates must be a non-empty list"),
    ],
)
def test_bad_recommend_requests_get_400(
    service: ScoringServer, scorer: FakeScorer, request_: dict[str, Any], reason: str
) -> None:
    scorer.version = 1
    status, _, body = call(service, "POST", "/recommend", request_)
    assert status == 400 and reason in body["error"]


def test_wrong_paths_methods_and_sizes(service: ScoringServer, scorer: FakeScorer) -> None:
    scorer.version = 1
    assert call(service, "GET", "/nope")[0] == 404
    status, headers, _ = call(service, "GET", "/score")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = call(service, "POST", "/readyz", {})
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    host, port = service.url.removeprefix("http://").split(":")
    for head, status in [
        (f"Content-Length: {MAX_BODY + 1}", b"413"),  # answered before the body is sent
        ("Transfer-Encoding: chunked", b"411"),  # a body of no stated length
    ]:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n".encode())
            assert sock.recv(1024).startswith(b"HTTP/1.1 " + status + b" ")


def test_one_connection_carries_many_requests(service: ScoringServer, scorer: FakeScorer) -> None:
    scorer.version = 1
    host, port = service.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for i in range(5):
        conn.request("POST", "/score", body=json.dumps({"user": "u", "items": [str(i)]}))
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Connection") == "keep-alive"
        assert json.loads(response.read())["scores"] == pytest.approx([i / 100 + 0.001], abs=1e-6)
    conn.close()


def test_metrics_time_requests_and_tell_the_model_age(service: ScoringServer, scorer: FakeScorer) -> None:
    registry = service.metrics.registry
    labels = {"model": "feed", "endpoint": "score", "code": "200"}
    count = "stream_learner_serving_request_duration_seconds_count"
    assert registry.get_sample_value(count, labels) == 0  # exists from the start
    assert registry.get_sample_value("stream_learner_serving_ready", {"model": "feed"}) == 0
    scorer.version = 1
    for _ in range(3):
        call(service, "POST", "/score", {"user": "u", "items": ["1"]})
    call(service, "POST", "/score", raw=b"[]")
    assert registry.get_sample_value(count, labels) == 3
    assert registry.get_sample_value(count, {**labels, "code": "400"}) == 1
    assert registry.get_sample_value("stream_learner_serving_ready", {"model": "feed"}) == 1
    age = registry.get_sample_value("stream_learner_serving_model_age_seconds", {"model": "feed"})
    assert age is not None and age > 1e9  # the fake model's newest event is from 1970
    status, _, text = call(service, "GET", "/metrics")
    assert status == 200 and b"stream_learner_serving_request_duration_seconds_bucket{" in text
