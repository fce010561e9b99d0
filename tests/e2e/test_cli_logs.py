"""The CLI's log with the broker down: librdkafka's lines come through logging (here as JSON lines),
a connection refused 20 times a second is said once, and a read-only command does not speak of
restarts and commits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_read_only_command_with_the_broker_down_logs_json_lines_only():
    env = {**os.environ, "STREAM_LEARNER_KAFKA__STARTUP_TIMEOUT_SECONDS": "4"}
    address = f"127.0.0.1:{_closed_port()}"
    command = ["snapshots", "list", "--bootstrap-server", address, "--topic", "t", "--model", "m"]
    proc = subprocess.run(
        [sys.executable, "-m", "stream_learner", "--log-format", "json", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 4, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # no line but JSON ones
    librdkafka = [r for r in records if r["logger"] == "stream_learner.librdkafka"]
    assert librdkafka, records  # routed through logging, not written by librdkafka itself
    refused = [r for r in librdkafka if "Connection refused" in r["message"]]
    assert 1 <= len(refused) <= 2  # about 80 attempts in 4 s: held back after the first
    (failed,) = [r for r in records if r["logger"] == "stream_learner" and r["level"] == "ERROR"]
    assert failed["message"].startswith("failed: ") and address in failed["message"]
    assert "restart" not in failed["message"] and "commit" not in failed["message"]
