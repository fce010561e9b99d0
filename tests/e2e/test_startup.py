"""Start-up failures of the CLI: an unreachable broker or a missing input topic ends the process
within ``kafka.startup_timeout_seconds`` with exit code 2 and one line naming the address or the topic,
having created nothing; secrets never reach the output of ``config`` or the log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.broker_support import free_port

STARTUP_TIMEOUT = 3.0
#: What a Python start (torch included) may add to the start-up timeout on a busy machine.
SLACK = 25.0
SECRETS = {
    "STREAM_LEARNER_KAFKA__SASL_PASSWORD": "hunter2-sasl",
    "STREAM_LEARNER_KAFKA__EXTRA": json.dumps(
        {
            "sasl.oauthbearer.config": "principal=svc clientSecret=hunter2-oauth",
            "sasl.oauthbearer.client.secret": "hunter2-client",
            "socket.timeout.ms": "5000",
        }
    ),
    "STREAM_LEARNER_INPUT__SCHEMA_REGISTRY_URL": "https://svc:hunter2-url@registry.example:8081/api",
    "STREAM_LEARNER_INPUT__SCHEMA_REGISTRY_PASSWORD": "hunter2-registry",
    "STREAM_LEARNER_SNAPSHOT__SIGNING_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
}


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream_learner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


def _env(tmp_path: Path, bootstrap: str, topic: str, name: str) -> dict[str, str]:
    import os

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")},
        "STREAM_LEARNER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAM_LEARNER_KAFKA__STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT),
        "STREAM_LEARNER_INPUT__TOPIC": topic,
        "STREAM_LEARNER_INPUT__GROUP_ID": f"g-{name}",
        "STREAM_LEARNER_MODEL__NAME": name,
        "STREAM_LEARNER_SNAPSHOT__TOPIC": f"{name}.snapshots",
        "STREAM_LEARNER_DEAD_LETTER__TOPIC": f"{name}.dlq",
        "STREAM_LEARNER_METRICS__PORT": "0",
        "STREAM_LEARNER_TRAIN__DEVICE": "cpu",
    }


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_unreachable_broker_ends_the_start_with_one_line_naming_it():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    name = f"m-{uuid.uuid4().hex[:8]}"
    env = _env(Path(), address, "events", name)
    code, _, stderr, took = _cli("run", env=env)
    assert code == 2, stderr
    line = _one_line(stderr)
    assert address in line and "kafka.bootstrap_servers" in line, line
    assert took < STARTUP_TIMEOUT + SLACK, took


def test_a_missing_input_topic_ends_the_start_naming_it_and_creates_nothing(kafka_bootstrap):
    name = f"m-{uuid.uuid4().hex[:8]}"
    topic = f"absent-{name}"
    env = _env(Path(), kafka_bootstrap, topic, name)
    code, _, stderr, took = _cli("run", env=env)
    assert code == 2, stderr
    line = _one_line(stderr)
    assert topic in line and "input.topic" in line, line
    assert took < STARTUP_TIMEOUT + SLACK, took
    existing = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30).topics
    assert not {f"{name}.snapshots", f"{name}.dlq", topic} & set(existing), "a topic was created"


def test_secrets_show_neither_in_config_nor_in_the_log():
    name = f"m-{uuid.uuid4().hex[:8]}"
    env = {**_env(Path(), f"127.0.0.1:{free_port()}", "events", name), **SECRETS}
    code, stdout, stderr, _ = _cli("config", env=env)
    assert code == 0, stderr
    shown = json.loads(stdout)
    assert shown["kafka"]["extra"]["socket.timeout.ms"] == "5000"  # not a secret: shown
    assert shown["input"]["schema_registry_url"] == "https://***@registry.example:8081/api"
    code, _, log, _ = _cli("--log-level", "DEBUG", "run", env=env)
    assert code == 2, log
    for secret in ("hunter2", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"):
        assert secret not in stdout, secret
        assert secret not in log, secret
