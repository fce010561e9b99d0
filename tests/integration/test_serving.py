"""The scoring service on a real subscriber, through the broker: a model name or topic that is not
there is reported by /readyz, and 20 new versions swap in under load with no request failed or
answered by a mix of versions."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings
from stream_learner.serving import ModelSubscriber
from stream_learner.serving.http import ScoringServer
from tests.snapshot_support import (
    SNAPSHOT_TOPIC_CONFIG,
    logistic_spec,
    logistic_state,
    messages,
    meta,
    produce_raw,
)

MODEL = "home-feed"
SWAPS = 20
ITEMS = [f"i{k}" for k in range(100)]


def bias(version: int) -> float:
    """Every score of version v is sigmoid(v / 50): an answer shows which version made it."""
    return version / 50


def full(version: int) -> list[bytes]:
    spec = logistic_spec()
    tensors = logistic_state(spec, 0.0)
    tensors["model.bias"][0] = bias(version)
    return messages(meta(MODEL, version, "FULL", spec), tensors)


def delta(version: int) -> list[bytes]:
    tensors = logistic_state(logistic_spec(), 0.0)
    tensors["model.bias"][0] = bias(version)
    return messages(meta(MODEL, version, "DELTA"), {"model.bias": tensors["model.bias"]})


@pytest.fixture
def served(kafka_bootstrap: str, new_topic: Any) -> Iterator[tuple[str, ModelSubscriber, ScoringServer]]:
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    produce_raw(kafka_bootstrap, topic, MODEL.encode(), full(1))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, startup_timeout_seconds=10)
    registry = CollectorRegistry()
    subscriber = ModelSubscriber(kafka, topic, MODEL, registry=registry, follow_input=False)
    with ScoringServer(subscriber, "127.0.0.1", 0, registry) as server:
        subscriber.start(wait=30)
        try:
            yield topic, subscriber, server
        finally:
            subscriber.close()


def post(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def connect(server: ScoringServer) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def test_unknown_topic_and_model_are_reported_by_readyz(kafka_bootstrap: str, new_topic: Any) -> None:
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    produce_raw(kafka_bootstrap, topic, MODEL.encode(), full(1))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, startup_timeout_seconds=5)
    for where, name, expected in [
        (f"absent-{uuid.uuid4().hex[:8]}", MODEL, "does not exist"),
        (topic, "home-fed", "is the model name right?"),
    ]:
        registry = CollectorRegistry()
        subscriber = ModelSubscriber(kafka, where, name, registry=registry, follow_input=False)
        with ScoringServer(subscriber, "127.0.0.1", 0, registry) as server:
            subscriber.start(wait=5)
            conn = connect(server)
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 503 and expected in body["problem"], body
            assert post(conn, "/score", {"user": "u", "items": ["i1"]})[0] == 503
            subscriber.close()


def test_twenty_swaps_under_load_fail_no_request(
    kafka_bootstrap: str, served: tuple[str, ModelSubscriber, ScoringServer]
) -> None:
    topic, subscriber, server = served
    assert subscriber.version == 1
    answers: list[list[tuple[int, dict[str, Any], float]]] = [[] for _ in range(3)]
    stop = threading.Event()

    def load(mine: list[tuple[int, dict[str, Any], float]]) -> None:
        conn = connect(server)
        while not stop.is_set():
            started = time.perf_counter()
            status, body = post(conn, "/score", {"user": "u1", "items": ITEMS})
            mine.append((status, body, time.perf_counter() - started))
        conn.close()

    clients = [threading.Thread(target=load, args=(mine,)) for mine in answers]
    for client in clients:
        client.start()
    try:
        for version in range(2, SWAPS + 2):
            time.sleep(0.15)
            produce_raw(
                kafka_bootstrap, topic, MODEL.encode(), full(version) if version % 5 == 0 else delta(version)
            )
        assert subscriber.wait_for_version(SWAPS + 1, 60), subscriber.version
        time.sleep(0.3)  # answers from the last version too
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    every = [a for mine in answers for a in mine]
    failed = [(status, body) for status, body, _ in every if status != 200]
    assert not failed, failed[:3]
    for _, body, _ in every:
        expected = 1 / (1 + math.exp(-bias(body["version"])))
        assert len(body["scores"]) == len(ITEMS)
        assert max(abs(s - expected) for s in body["scores"]) < 1e-6, body["version"]  # one version each
    for mine in answers:
        versions = [body["version"] for _, body, _ in mine]
        assert versions == sorted(versions)
    assert len({body["version"] for _, body, _ in every}) >= SWAPS // 2
    assert max(seconds for _, _, seconds in every) < 2.0  # no request waited on a swap
    status, body = post(connect(server), "/recommend", {"user": "u1", "k": 3})
    assert status == 200 and body["version"] == SWAPS + 1 and len(body["items"]) == 3
