"""Shared pytest fixtures: a real Kafka broker for integration and end-to-end tests.

Where the broker comes from, first match wins:

1. ``STREAM_LEARNER_TEST_BOOTSTRAP`` (e.g. ``127.0.0.1:9092``): an already running cluster.
2. A Docker engine that answers: testcontainers' ``KafkaContainer(...).with_kraft()``
   (image from ``STREAM_LEARNER_TEST_KAFKA_IMAGE``), stopped at the end of the session.
3. The local single-node KRaft broker of ``deploy/kafka/kafka.sh start`` (Maven Central jars, Java 17).
   It is left running at the end of the session and reused by the next one
   (``deploy/kafka/kafka.sh stop`` stops it).

If none works, tests that need the broker are skipped with the reason, except under CI (``CI=true``),
where they fail: CI must never silently skip integration tests. ``schema_registry_url`` gives a real
Confluent-compatible Schema Registry the same way (`deploy/schema-registry/registry.sh`).

The broker is only looked for when a test requests ``kafka_bootstrap`` (directly or through
``new_topic``), so a unit-test run never starts one. Tests under ``tests/integration/`` and
``tests/e2e/`` are marked ``integration`` automatically (``-m "not integration"`` deselects them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"

BOOTSTRAP_ENV = "STREAM_LEARNER_TEST_BOOTSTRAP"
IMAGE_ENV = "STREAM_LEARNER_TEST_KAFKA_IMAGE"
DEFAULT_IMAGE = "confluentinc/cp-kafka:7.6.0"

# Directory under tests/ -> markers its tests get automatically.
_AUTO_MARKERS: dict[str, tuple[str, ...]] = {
    "integration": ("integration",),
    "e2e": ("integration", "e2e"),
}

# Broker settings the local broker has (deploy/kafka/server.properties.template), for the container.
_CONTAINER_ENV = {
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
    "KAFKA_TRANSACTION_MAX_TIMEOUT_MS": "900000",
    "KAFKA_MESSAGE_MAX_BYTES": "16777216",
    "KAFKA_REPLICA_FETCH_MAX_BYTES": "16777216",
    "KAFKA_NUM_PARTITIONS": "1",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = item.path.resolve().relative_to(TESTS_DIR)
        except ValueError:
            continue
        markers = _AUTO_MARKERS.get(rel.parts[0], ()) if len(rel.parts) > 1 else ()
        for marker in markers:
            if item.get_closest_marker(marker) is None:
                item.add_marker(getattr(pytest.mark, marker))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _no_broker(reasons: list[str]) -> None:
    message = "no Kafka broker available for integration tests:\n  - " + "\n  - ".join(reasons)
    if _in_ci():
        pytest.fail(message + "\n(CI=true: integration tests must not be skipped)", pytrace=False)
    pytest.skip(message)


def _broker_answers(bootstrap: str, timeout: float = 30.0) -> str | None:
    """None when a metadata request to ``bootstrap`` succeeds, else the error as text."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        return f"confluent_kafka is not importable: {exc}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 10000})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if metadata.brokers else "metadata lists no brokers"


def _docker_engine_answers(reasons: list[str]) -> bool:
    """Cheap check (a few seconds at most) that a Docker engine is reachable."""
    docker = shutil.which("docker")
    if docker is None and not os.environ.get("DOCKER_HOST"):
        reasons.append("docker: no docker CLI and no DOCKER_HOST")
        return False
    if docker is not None:
        try:
            proc = subprocess.run(
                [docker, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                text=True,
                timeout=8,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"docker: `docker info` did not answer ({type(exc).__name__})")
            return False
        if proc.returncode != 0 or not proc.stdout.strip():
            detail = (proc.stderr.strip().splitlines() or ["no server version"])[-1]
            reasons.append(f"docker: no engine ({detail})")
            return False
        return True
    try:
        import docker as docker_sdk

        docker_sdk.from_env(timeout=5).ping()
    except Exception as exc:
        reasons.append(f"docker: engine at DOCKER_HOST does not answer ({type(exc).__name__}: {exc})")
        return False
    return True


def _start_container(reasons: list[str]):  # -> KafkaContainer | None
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        try:
            from testcontainers.kafka import KafkaContainer
        except ImportError as exc:
            reasons.append(f"testcontainers: not importable ({exc})")
            return None
    image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
    container = None
    try:
        # The constructor already talks to the engine (the Docker SDK may see another engine than the CLI).
        container = KafkaContainer(image).with_kraft()
        for key, value in _CONTAINER_ENV.items():
            container.with_env(key, value)
        container.start(timeout=180)
    except Exception as exc:
        reasons.append(f"testcontainers: {image} did not start ({type(exc).__name__}: {exc})")
        if container is not None:
            with contextlib.suppress(Exception):
                container.stop()
        return None
    return container


def _start_local_broker(reasons: list[str]) -> str | None:
    if not KAFKA_SH.is_file():
        reasons.append(f"local broker: {KAFKA_SH} is missing")
        return None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        reasons.append("local broker: no java on PATH (JDK 17+ needed)")
        return None
    try:
        # Downloads the jars on first use (needs mvn and Maven Central), then starts in seconds.
        proc = subprocess.run(
            ["bash", str(KAFKA_SH), "start"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reasons.append(f"local broker: `{KAFKA_SH} start` failed ({type(exc).__name__}: {exc})")
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        reasons.append(f"local broker: `{KAFKA_SH} start` exited {proc.returncode}:\n{tail}")
        return None
    return lines[-1].strip()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address (``host:port``) of a real Kafka broker; see the module docstring."""
    reasons: list[str] = []

    explicit = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if explicit:
        error = _broker_answers(explicit)
        if error is not None:
            _no_broker([f"{BOOTSTRAP_ENV}={explicit} does not answer: {error}"])
        yield explicit
        return

    if _docker_engine_answers(reasons):
        container = _start_container(reasons)
        if container is not None:
            try:
                bootstrap = container.get_bootstrap_server()
                error = _broker_answers(bootstrap, timeout=60)
                if error is not None:
                    _no_broker([*reasons, f"testcontainers broker {bootstrap} does not answer: {error}"])
                yield bootstrap
            finally:
                container.stop()
            return

    bootstrap = _start_local_broker(reasons)
    if bootstrap is not None:
        error = _broker_answers(bootstrap, timeout=60)
        if error is None:
            # Started (or reused) by deploy/kafka/kafka.sh: deliberately left running for the next session.
            yield bootstrap
            return
        reasons.append(f"local broker {bootstrap} does not answer: {error}")

    _no_broker(reasons)


REGISTRY_SH = REPO_ROOT / "deploy" / "schema-registry" / "registry.sh"
REGISTRY_ENV = "STREAM_LEARNER_TEST_SCHEMA_REGISTRY"


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    """A real Confluent-compatible Schema Registry: ``STREAM_LEARNER_TEST_SCHEMA_REGISTRY`` when set,
    else Apicurio Registry started (or reused) by ``deploy/schema-registry/registry.sh start`` and
    left running, like the local broker. Missing: a skip, and under CI a failure."""
    explicit = os.environ.get(REGISTRY_ENV, "").strip()
    if explicit:
        return explicit
    try:
        proc = subprocess.run(
            ["bash", str(REGISTRY_SH), "start"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"`{REGISTRY_SH} start` failed ({type(exc).__name__}: {exc})"
    else:
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            return lines[-1].strip()
        reason = f"`{REGISTRY_SH} start` exited {proc.returncode}:\n" + proc.stderr[-3000:]
    message = f"no Schema Registry for the tests: {reason}"
    if _in_ci():
        pytest.fail(message + "\n(CI=true: integration tests must not be skipped)", pytrace=False)
    pytest.skip(message)


NewTopicFactory = Callable[..., str]


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[NewTopicFactory]:
    """Factory ``new_topic(prefix="t", partitions=1, config=None) -> name``.

    Creates a uniquely named topic (``<prefix>-<uuid hex>``) with the given partitions and topic
    configs (e.g. ``{"cleanup.policy": "compact", "max.message.bytes": "10485760"}``), waits until
    every partition has a leader, and deletes the topics it created when the test ends.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    from tests.support import wait_for_topic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def factory(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        spec = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            config={k: str(v) for k, v in (config or {}).items()},
        )
        futures = admin.create_topics([spec], operation_timeout=30, request_timeout=60)
        futures[name].result(timeout=90)
        created.append(name)
        wait_for_topic(admin, name, partitions)
        return name

    yield factory

    if created:
        futures = admin.delete_topics(created, operation_timeout=30, request_timeout=60)
        for name, future in futures.items():
            try:
                future.result(timeout=60)
            except Exception as exc:  # cleanup must not mask the test's own outcome
                print(f"new_topic: could not delete {name}: {exc}")
