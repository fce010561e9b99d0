"""``stream-learner serve`` as a subprocess, configured by the learner's own settings file, against
a model a learner committed to the real broker: ready with the newest version, scores as the
subscriber scores, says why it is not ready for a wrong model name, stops on SIGTERM, and exits 2
when its port is taken."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from stream_learner.serving import ModelSubscriber
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, learner_settings, read_snapshots


class Service:
    """A ``stream-learner serve`` process; ``url`` once it has said where it listens."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_learner", "serve", "--config", str(config), *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def url(self, timeout: float = 60) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if m := re.search(r"on http://([\d.]+):(\d+)", line):
                    return m.group(1), int(m.group(2))
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError("the service never said where it listens:\n" + "".join(self.lines))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(*self.url(), timeout=30)
        conn.request(method, path, body=None if body is None else json.dumps(body))
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        return response.status, answer

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._reader.join(10)
        return code


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)}
    finally:
        consumer.close()


def wait_ready(service: Service, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = service.call("GET", "/readyz")
        if status == 200:
            return body
        time.sleep(0.2)
    raise AssertionError(f"not ready: {body}")


def test_serve_a_learners_model(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic("events", partitions=2)
    settings = learner_settings(kafka_bootstrap, topic, snapshot={"every_windows": 1, "full_every": 3})
    produce_synthetic(settings.kafka, topic, 3000, rate=1000, backfill=True, config=SyntheticConfig(seed=4))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(120)
    newest = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1].meta
    config = tmp_path / "learner.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\nstartup_timeout_seconds = 5\n'
        f'[input]\ntopic = "{topic}"\n'
        f'[snapshot]\ntopic = "{settings.snapshot.topic}"\n'
        f'[model]\nname = "{settings.model.name}"\nuser_buckets = 4096\nitem_buckets = 1024\n'
    )

    service = Service(config, "--port", "0")
    try:
        assert wait_ready(service) == {"ready": True, "model": settings.model.name, "version": newest.version}
        at_ms = newest.newest_event_ms + 60_000
        items = [f"item-{k}" for k in range(100)]
        request = {"user": "user-3", "items": items, "at_ms": at_ms}
        with ModelSubscriber(
            settings.kafka, settings.snapshot.topic, settings.model.name, registry=CollectorRegistry(),
            input_settings=settings,
        ).start(wait=30) as subscriber:  # fmt: skip
            assert subscriber.input is not None and subscriber.input.wait_for(
                end_offsets(kafka_bootstrap, topic), 30
            )
            expected = subscriber.score("user-3", items, at_ms=at_ms)
        deadline = time.monotonic() + 30
        while True:  # the service has applied the whole input too, then it scores alike
            status, body = service.call("POST", "/score", request)
            assert status == 200 and body["version"] == newest.version
            if np.allclose(body["scores"], expected, rtol=0, atol=1e-6) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        np.testing.assert_allclose(body["scores"], expected, rtol=0, atol=1e-6)
        status, body = service.call("POST", "/recommend", {"user": "user-3", "k": 5})
        assert status == 200 and len(body["items"]) == 5
    finally:
        code = service.stop()
    assert code == 0, "".join(service.lines)
    assert any("received SIGTERM" in line for line in service.lines)

    wrong = Service(config, "--port", "0", "--model", "home-fed")
    try:
        status, body = wrong.call("GET", "/readyz")
        assert status == 503 and body["model"] == "home-fed"
        deadline = time.monotonic() + 30
        while "other models" not in body["problem"] and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = wrong.call("GET", "/readyz")
        assert "is the model name right?" in body["problem"], body
    finally:
        assert wrong.stop() == 0, "".join(wrong.lines)
    assert any("no model of home-fed served" in line for line in wrong.lines), "".join(wrong.lines)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "stream_learner", "serve", "--config", str(config), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert busy.returncode == 2 and "--port" in busy.stderr, busy.stderr
