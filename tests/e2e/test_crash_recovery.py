"""SIGKILL the learner CLI at random moments, at least ten times, and restart it each time.

Over 50,000 events in three partitions (time-ordered within each partition, so no event is late and an
uninterrupted run and a crash-restarted run see the same windows), the committed history must tile
every partition (no gap, no overlap, every event), every version must appear once, and on the CPU in
deterministic mode the final model must equal that of one uninterrupted run over the same input.
The kill moments are drawn from a seeded generator (printed, to replay a failure): during start-up
(0.5-5 s after the start, or as soon as the learner is active), right after it is active, or after
1-6 snapshot commits, plus up to 0.2 s. Training is made slow enough (small batches, two passes) that
the stream outlasts the ten killed lives.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka.admin import AdminClient

from stream_learner.config import KafkaSettings
from stream_learner.snapshots.chain import newest_state
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import assert_history_tiles, end_offsets, read_snapshots

EVENTS = 50_000
PARTITIONS = 3
KILLS = 10
SEED = int(os.environ.get("STREAM_LEARNER_CRASH_SEED", "20261129"))


def _config(path: Path, bootstrap: str, topic: str, name: str) -> Path:
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{bootstrap}"
# static membership: a restarted instance takes over its lease at once instead of after the
# session timeout of the instance it replaces (the killed one)
extra = {{ "group.instance.id" = "{name}-host" }}
[input]
topic = "{topic}"
group_id = "{name}"
[window]
size_seconds = 0.5
allowed_lateness_seconds = 0.0
idle_timeout_seconds = 2.0
[dead_letter]
topic = "{name}.dlq"
[snapshot]
topic = "{name}.snapshots"
every_windows = 1
full_every = 4
max_message_bytes = 65536
[model]
name = "{name}"
kind = "dnn"
user_buckets = 4096
item_buckets = 1024
[train]
device = "cpu"
deterministic = true
batch_size = 16
passes = 2
[metrics]
port = 0
"""
    )
    return path


class Learner:
    """One ``stream-learner run`` process, its log lines read as they come."""

    def __init__(self, config: Path, exit_when_idle: bool = False) -> None:
        cmd = [sys.executable, "-m", "stream_learner", "run", "--config", str(config)]
        if exit_when_idle:
            cmd.append("--exit-when-idle")
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.committed = 0
        self.active = threading.Event()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                if "stream_learner.runtime.app: active:" in line:
                    self.active.set()
                if ") committed:" in line:
                    self.committed += 1
                self._changed.notify_all()

    def wait_commits(self, n: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.committed >= n or self.proc.poll() is not None, timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(30)

    def finish(self, timeout: float) -> None:
        assert self.proc.wait(timeout) == 0, "".join(self.lines[-40:])
        self._reader.join(30)

    def log(self, marker: str) -> list[str]:
        return [line for line in self.lines if marker in line]


def _final_state(
    bootstrap: str, snapshot_topic: str, input_topic: str, ends: dict[int, int]
) -> tuple[dict[str, np.ndarray], dict]:
    """The committed history's final state, after checking that it tiles every partition."""
    snapshots = read_snapshots(bootstrap, snapshot_topic)
    assert_history_tiles(snapshots, input_topic, ends)
    return newest_state(snapshots), snapshots[-1].meta.state_dict()["learner"]


def test_sigkill_at_random_moments_neither_loses_nor_repeats_training(kafka_bootstrap, new_topic, tmp_path):
    rng = random.Random(SEED)
    print(f"crash test seed {SEED} (set STREAM_LEARNER_CRASH_SEED to replay)")
    topic = new_topic("crash-events", partitions=PARTITIONS)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    produce_synthetic(kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=11))
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    assert sum(ends.values()) == EVENTS
    tag = uuid.uuid4().hex[:8]
    crashing = _config(tmp_path / "crash.toml", kafka_bootstrap, topic, f"crash-{tag}")
    started: list[Learner] = []

    def start(config: Path, exit_when_idle: bool = False) -> Learner:
        started.append(Learner(config, exit_when_idle))
        return started[-1]

    try:
        reference = start(_config(tmp_path / "ref.toml", kafka_bootstrap, topic, f"ref-{tag}"), True)
        restored: list[str] = []
        for kill in range(KILLS):
            life = start(crashing)
            (moment,) = rng.choices(["starting", "active", "commits"], weights=[1, 1, 3])
            if moment == "starting":  # importing, taking the lease, restoring (or just done)
                life.active.wait(rng.uniform(0.5, 5.0))
            else:
                assert life.active.wait(180), "".join(life.lines[-40:])
                if moment == "commits":
                    life.wait_commits(rng.randint(1, 6), 60)
                time.sleep(rng.uniform(0.0, 0.2))
            assert life.proc.poll() is None, f"life {kill} ended by itself:\n" + "".join(life.lines[-40:])
            life.kill()
            restored += [
                line.split("restored model ")[1].split(" (")[0] for line in life.log("restored model")
            ]
            print(f"kill {kill + 1}: {moment}, {life.committed} commits in this life")

        last = start(crashing, exit_when_idle=True)
        last.finish(300)
        reference.finish(300)

        # the kills came mid-stream: the last life still had events to train, from a restored model
        (stopped,) = last.log("stopped: model v")
        assert "(restored v" in stopped and "; 0 windows trained" not in stopped, stopped
        assert last.log("restored model")
        assert len(set(restored)) >= 3, restored  # restarts resumed from several points of the history

        crashed_state, crashed = _final_state(kafka_bootstrap, f"crash-{tag}.snapshots", topic, ends)
        reference_state, uninterrupted = _final_state(kafka_bootstrap, f"ref-{tag}.snapshots", topic, ends)
        assert crashed["events_trained"] == uninterrupted["events_trained"] == EVENTS
        assert crashed_state.keys() == reference_state.keys()
        for name, tensor in reference_state.items():
            np.testing.assert_allclose(crashed_state[name], tensor, rtol=1e-5, atol=1e-7, err_msg=name)
    finally:
        for learner in started:
            if learner.proc.poll() is None:
                learner.kill()
        _delete_outputs(kafka_bootstrap, tag)


def _delete_outputs(bootstrap: str, tag: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=30).topics
    outputs = [
        f"{k}-{tag}.{s}"
        for k in ("crash", "ref")
        for s in ("snapshots", "dlq")
        if f"{k}-{tag}.{s}" in existing
    ]
    for future in admin.delete_topics(outputs).values() if outputs else []:
        future.result(60)
