"""A dedicated Kafka broker for tests that stop and start it (outages), never the shared one.

`DedicatedBroker` runs deploy/kafka/kafka.sh with its own home (a temporary folder), its own client
and controller ports, and the jars of the shared broker's home (``<repo>/.cache/kafka/lib``, which
`deploy/kafka/kafka.sh start` and CI's ``.ci/run`` fill) when they are there; otherwise kafka.sh
fetches them with Maven. Like the shared broker, a missing Java or a broker that does not start skips
the test locally and fails it under CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import KAFKA_SH, REPO_ROOT, _in_ci

SHARED_LIB = REPO_ROOT / ".cache" / "kafka" / "lib"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DedicatedBroker:
    """One single-node KRaft broker of its own, started and stopped by the test."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        controller = free_port()
        while controller == self.port:
            controller = free_port()
        self.env = {
            **os.environ,
            "STREAM_LEARNER_KAFKA_HOME": str(home),
            "STREAM_LEARNER_KAFKA_PORT": str(self.port),
            "STREAM_LEARNER_KAFKA_CONTROLLER_PORT": str(controller),
        }
        home.mkdir(parents=True, exist_ok=True)
        if (SHARED_LIB / ".pom.sha256").is_file() and not (home / "lib").exists():
            (home / "lib").symlink_to(SHARED_LIB, target_is_directory=True)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _kafka_sh(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_SH), action],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> float:
        """Start the broker and wait until it is ready; return the monotonic time it was."""
        proc = self._kafka_sh("start", 900)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh start exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return time.monotonic()

    def stop(self) -> float:
        """Stop the broker (SIGTERM, as an orderly broker shutdown); return the monotonic time it was
        down."""
        proc = self._kafka_sh("stop", 120)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return time.monotonic()


def start_dedicated_broker(home: Path) -> DedicatedBroker:
    """A started `DedicatedBroker`; skips (fails under CI) when none can run here."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        reason = "a dedicated broker needs Java 17+ (no java on PATH, no JAVA_HOME)"
        pytest.fail(reason, pytrace=False) if _in_ci() else pytest.skip(reason)
    broker = DedicatedBroker(home)
    try:
        broker.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        reason = f"the dedicated broker did not start: {exc}"
        pytest.fail(reason, pytrace=False) if _in_ci() else pytest.skip(reason)
    return broker
