"""Shutdown of the CLI process: SIGTERM (then SIGINT, to a restarted process) mid-stream makes the job
stop taking input, finish the window in training, publish a final snapshot, commit and exit 0 in
bounded time; a third run catches up, and the committed history shows that no event was lost or
trained twice."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stream_learner.config import KafkaSettings
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import (
    assert_history_tiles,
    committed_offsets,
    end_offsets,
    read_snapshots,
    scrape,
    wait_for,
)

PARTITIONS = 3
RATE = 1_500.0  # events per second, live
EVENTS = 18_000  # twelve seconds of them
STOP_WITHIN = 60.0  # seconds from the signal to the exit before the test gives up
STOPS_WITHIN = 20.0  # what a clean stop takes at most: finish the window, publish, commit, close


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, bootstrap: str, topic: str, port: int) -> tuple[Path, str]:
    """A TOML settings file for a fresh model; returns it and the model's name."""
    name = f"m-{uuid.uuid4().hex[:10]}"
    path = tmp_path / f"learner-{port}.toml"
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{bootstrap}"
[input]
topic = "{topic}"
group_id = "g-{name}"
[window]
size_seconds = 1.0
allowed_lateness_seconds = 1.0
idle_timeout_seconds = 3.0
[dead_letter]
topic = "{name}.dlq"
[snapshot]
topic = "{name}.snapshots"
every_windows = 2
[model]
name = "{name}"
kind = "logistic"
user_buckets = 4096
item_buckets = 1024
[metrics]
port = {port}
"""
    )
    return path, name


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "stream-learner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stream_learner"]


def _start(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([*_cli(), "run", "--config", str(config), *args], stdout=out, stderr=out)


def _trained(port: int) -> float:
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics").get(
            ("stream_learner_windows_trained_total", ()), 0.0
        )
    except OSError:
        return 0.0


def _interrupt(proc: subprocess.Popen[bytes], port: int, signum: signal.Signals, log: Path) -> float:
    """Wait until the job has trained windows, send ``signum``, return how long the exit took."""
    wait_for(lambda: _trained(port) >= 2 or proc.poll() is not None, 90, "two trained windows")
    assert proc.poll() is None, log.read_text()[-3000:]
    sent = time.monotonic()
    proc.send_signal(signum)
    rc = proc.wait(STOP_WITHIN)
    took = time.monotonic() - sent
    assert rc == 0, log.read_text()[-3000:]
    return took


def test_signals_mid_stream_stop_cleanly_and_nothing_is_lost_or_trained_twice(
    tmp_path, kafka_bootstrap, new_topic
):
    topic = new_topic("events", partitions=PARTITIONS)
    port = _free_port()
    config, name = _config(tmp_path, kafka_bootstrap, topic, port)
    log = tmp_path / "learner.log"
    produced: dict[str, Any] = {}
    producer = threading.Thread(
        target=lambda: produced.update(
            stats=produce_synthetic(
                KafkaSettings(bootstrap_servers=kafka_bootstrap),
                topic,
                EVENTS,
                RATE,
                config=SyntheticConfig(seed=5),
            )
        ),
        daemon=True,
    )
    producer.start()

    took_term = _interrupt(_start(config, log), port, signal.SIGTERM, log)
    took_int = _interrupt(_start(config, log), port, signal.SIGINT, log)
    producer.join(120)
    assert produced["stats"].events == EVENTS
    final = _start(config, log, "--exit-when-idle")
    assert final.wait(120) == 0, log.read_text()[-3000:]

    text = log.read_text()
    assert "received SIGTERM" in text and "received SIGINT" in text
    assert took_term < STOPS_WITHIN and took_int < STOPS_WITHIN
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    assert sum(ends.values()) == EVENTS
    assert committed_offsets(kafka_bootstrap, f"g-{name}", topic, PARTITIONS) == ends
    snapshots = read_snapshots(kafka_bootstrap, f"{name}.snapshots")
    assert_history_tiles(snapshots, topic, ends)  # every partition exactly once, from 0 to its end...
    # ...and the model took in every event exactly once across the three processes.
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == EVENTS
