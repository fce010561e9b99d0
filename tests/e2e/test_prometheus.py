"""The deploy/prometheus configuration against live processes: the real Prometheus binary (Debian's
``prometheus`` package; ``.ci/run`` installs it) scrapes a real ``stream-learner run`` that consumes
synthetic events from the real broker, with deploy/prometheus/prometheus.yml and alerts.yml changed
only where a test must (the target's address, one-second intervals). Its HTTP API must show the
rate of consumed events, every recording and alerting rule evaluated without error, and the labelled
counters at zero. The same learner then holds 500 half-sent requests without a thread more.

The binary: ``$PROMETHEUS``, else ``prometheus`` on PATH, else the one in Debian's package that
deploy/prometheus/promtool.sh unpacks. Missing under CI, the test fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from stream_learner.config import KafkaSettings
from stream_learner.ingest.events import RejectReason
from stream_learner.tools.produce import produce_synthetic
from tests.support import wait_for, wait_for_topic

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RATE = 400.0  # events per second, live


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def prometheus_binary() -> str:
    found = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if found:
        return found
    fetch = subprocess.run(
        [str(PROMETHEUS_DIR / "promtool.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    unpacked = Path(fetch.stdout.strip()).with_name("prometheus") if fetch.returncode == 0 else None
    if unpacked is not None and unpacked.is_file():
        return str(unpacked)
    message = f"no prometheus binary (apt-get install prometheus): {fetch.stderr.strip()[-300:]}"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Live:
    model: str
    learner: subprocess.Popen[bytes]
    metrics_port: int
    api: str  # Prometheus's base URL
    rules: int  # recording and alerting rules in alerts.yml

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = _get(f"{self.api}/api/v1/query?query={urllib.parse.quote(expr)}")
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])


def scrape_config(prometheus_port: int, metrics_port: int, model: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, aimed at this test's learner."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    learner = jobs["stream-learner"]
    assert learner.pop("dns_sd_configs")  # compose's service discovery, replaced by the one address
    learner["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    model_rule = next(r for r in learner["relabel_configs"] if r.get("target_label") == "model")
    model_rule["replacement"] = model
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from confluent_kafka.admin import AdminClient, NewTopic

    binary = prometheus_binary()
    tmp = tmp_path_factory.mktemp("prometheus")
    model = f"m-{uuid.uuid4().hex[:10]}"
    topic = f"{model}.events"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(60)
    wait_for_topic(admin, topic, 2)
    metrics_port, prometheus_port = _free_port(), _free_port()
    (tmp / "learner.toml").write_text(
        f"""
[kafka]
bootstrap_servers = "{kafka_bootstrap}"
[input]
topic = "{topic}"
group_id = "g-{model}"
[window]
size_seconds = 1.0
allowed_lateness_seconds = 0.5
[dead_letter]
topic = "{model}.dlq"
[snapshot]
topic = "{model}.snapshots"
[model]
name = "{model}"
kind = "logistic"
user_buckets = 4096
item_buckets = 1024
[metrics]
port = {metrics_port}
"""
    )
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(prometheus_port, metrics_port, model)))
    stop = threading.Event()
    producer = threading.Thread(
        target=produce_synthetic,
        args=(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, 10**7, RATE),
        kwargs={"stop": stop},
        daemon=True,
    )
    log = open(tmp / "processes.log", "wb")  # noqa: SIM115 - closed at teardown
    learner = subprocess.Popen(
        [sys.executable, "-m", "stream_learner", "run", "--config", str(tmp / "learner.toml")],
        stdout=log,
        stderr=log,
    )
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
    )
    rules = sum(
        len(g["rules"]) for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    )
    try:
        producer.start()
        yield Live(model, learner, metrics_port, f"http://127.0.0.1:{prometheus_port}", rules)
    finally:
        stop.set()
        prometheus.terminate()
        learner.send_signal(signal.SIGTERM)
        for proc in (prometheus, learner):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        producer.join(30)
        log.close()
        admin.delete_topics([topic, f"{model}.snapshots", f"{model}.dlq"])


def _alive(live: Live) -> None:
    assert live.learner.poll() is None, "the learner exited; see processes.log in the test's tmp folder"


def test_prometheus_scrapes_the_learner_and_evaluates_every_rule(live):
    def scraped() -> bool:
        _alive(live)
        try:
            targets = _get(f"{live.api}/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return False
        return any(t["labels"].get("model") == live.model and t["health"] == "up" for t in targets)

    wait_for(scraped, 90, "Prometheus to scrape the learner")

    def consuming() -> bool:
        _alive(live)
        rate = live.query(f'stream_learner:events_consumed:rate5m{{model="{live.model}"}}')
        return bool(rate) and float(rate[0]["value"][1]) > 0

    wait_for(consuming, 90, "a positive rate of consumed events (recording rule)")
    direct = live.query(f'sum(rate(stream_learner_events_consumed_total{{model="{live.model}"}}[30s]))')
    assert float(direct[0]["value"][1]) > 0

    def rules() -> list[dict[str, Any]]:
        groups = _get(f"{live.api}/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_for(
        lambda: all(r.get("lastEvaluation", "").startswith("20") for r in rules()), 30, "every rule evaluated"
    )
    evaluated = rules()
    assert len(evaluated) == live.rules
    unhealthy = {r["name"]: r.get("lastError") for r in evaluated if r["health"] != "ok"}
    assert not unhealthy
    assert live.query(f'ALERTS{{alertstate="firing",model="{live.model}"}}') == []


def test_labelled_counters_are_scraped_at_zero(live):
    def invalid_reasons() -> set[str]:
        _alive(live)
        found = live.query(f'stream_learner_events_invalid_total{{model="{live.model}"}}')
        return {s["metric"]["reason"] for s in found if float(s["value"][1]) == 0}

    wait_for(lambda: invalid_reasons() == set(get_args(RejectReason)), 90, "every reject reason at 0")
    kinds = live.query(f'stream_learner_snapshot_published_total{{model="{live.model}"}}')
    assert {s["metric"]["kind"] for s in kinds} == {"full", "delta"}


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_500_half_sent_requests_add_no_thread_to_the_learner(live):
    """Issue 9: they took the learner from 18 to 518 threads, held until the clients left."""
    url = f"http://127.0.0.1:{live.metrics_port}/metrics"
    wait_for(lambda: _get_ok(url), 90, "the learner's metrics endpoint")
    before = _threads(live.learner.pid)
    clients = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", live.metrics_port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            clients.append(sock)
        time.sleep(1.0)
        during = _threads(live.learner.pid)
        assert _get_ok(url)  # a scrape still gets through
    finally:
        for sock in clients:
            sock.close()
    assert during <= before + 2, (before, during)
    _alive(live)


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200 and b"stream_learner_active" in response.read()
    except OSError:
        return False
