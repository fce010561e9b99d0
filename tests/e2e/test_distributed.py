"""``stream-learner run --workers N`` against the real broker: a 2-rank gloo job end to end.

24,000 events and six messages that are not events in three partitions: rank 0 reads partitions 0
and 2, rank 1 partition 1. The job must learn (the prequential loss falls), commit a history that
tiles every partition with every event trained once, commit every partition's offsets under the
group and every rank's dead letters once (rank 0's transactions carry rank 1's), and publish the
layout of a single process, per-id counts included (every event counted once): the subscriber serves
the newest snapshot and scores exactly as a single process restored from it does. Then three ranks
continue the same model from the 2-rank snapshots (re-sharding) and stop on SIGTERM with exit 0, and
four ranks, one more than the partitions, are refused before anything starts (exit 2).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings, load_settings
from stream_learner.learning.learner import Learner
from stream_learner.learning.realtime import EVENTS as EVENTS_SUM
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots.chain import newest_state
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.distributed_support import Job, job_config
from tests.learning_support import assert_same_tensors
from tests.support import assert_history_tiles, committed_offsets, end_offsets, read_all, read_snapshots

EVENTS = 24_000  # and six messages that are not events
MORE = 6_000
PARTITIONS = 3


def test_a_two_rank_job_learns_commits_exactly_once_and_serves_like_one_process(
    kafka_bootstrap, new_topic, tmp_path
):
    topic = new_topic("dist-events", partitions=PARTITIONS)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    produce_synthetic(kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=3))
    garbage = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(6):  # read by rank 0 (partitions 0 and 2) and rank 1 (partition 1)
        garbage.produce(topic, value=b"not an event %d" % i, partition=i % PARTITIONS)
    assert garbage.flush(30) == 0
    name = f"dist-{uuid.uuid4().hex[:8]}"
    config = job_config(
        tmp_path / "learner.toml", kafka_bootstrap, topic, name, snapshot="every_windows = 3\nfull_every = 3"
    )
    settings = load_settings(config)
    jobs: list[Job] = []
    try:
        jobs.append(job := Job(config, workers=2))
        job.finish(240)
        assert job.partitions == {0: [0, 2], 1: [1]}

        snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        assert_history_tiles(snapshots, topic, ends)
        assert committed_offsets(kafka_bootstrap, name, topic, PARTITIONS) == ends
        assert sorted(_letters(kafka_bootstrap, settings.dead_letter.topic)) == sorted(
            (str(i % PARTITIONS), b"not an event %d" % i) for i in range(6)
        )  # every rank's, once, committed with rank 0's transactions
        learner_state = snapshots[-1].meta.state_dict()["learner"]
        assert learner_state["events_trained"] == EVENTS
        # a due full snapshot after the first comes right after the delta to the same state
        by_version = {s.meta.version: s for s in snapshots}
        fulls = [s for s in snapshots if s.meta.kind == "FULL" and s.meta.version > 1]
        assert fulls and all(by_version[f.meta.version - 1].meta.kind == "DELTA" for f in fulls)
        assert all(not f.meta.state_dict()["lineage"]["windows"] for f in fulls)
        losses = [s.meta.metrics["validation_loss"] for s in snapshots if "validation_loss" in s.meta.metrics]
        # learnt from the first snapshot on: the windows a two-rank job forms depend on the order in
        # which its ranks read, so the last losses vary by about +-0.01 from run to run (0.03 failed
        # twice in seven runs at 0.5204 and 0.5199 against 0.549; exactness is checked below)
        assert np.mean(losses[-3:]) < losses[0] - 0.02, losses

        # the layout of one process: a single learner takes the state as it is and holds exactly it
        state = newest_state(snapshots)
        single = Learner(settings)
        single.restore(state, learner_state)
        assert_same_tensors(single.tensors(), state)
        for field in ("user", "item"):  # every rank counted every event once, as one process does
            assert state[f"features.{field}.sums"][:, EVENTS_SUM].sum() == EVENTS
        with ModelSubscriber(
            kafka, settings.snapshot.topic, name, registry=CollectorRegistry()
        ) as subscriber:
            assert subscriber.refresh() == snapshots[-1].meta.version
            items = list(subscriber.recent_items())[:100]
            assert len(items) >= 50
            at = int(time.time() * 1000)
            scores = subscriber.score("u7", items, at_ms=at)
        rows = single.features.rows_for_ids(["u7"] * len(items), items)
        assert single.features.realtime is not None
        expected = single.trainer.predict(
            rows, single.features.realtime.query(rows[:, :2], np.full(len(rows), at))
        )
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
        assert scores.std() > 1e-3  # a model that tells items apart

        # three ranks continue the model of two: each takes its rows of the restored state; once they
        # have committed every event, a SIGTERM stops them all with exit 0
        produce_synthetic(kafka, topic, MORE, rate=1000, backfill=True, config=SyntheticConfig(seed=4))
        jobs.append(job := Job(config, workers=3, exit_when_idle=False))

        def trained_all(_: Job) -> bool:
            newest = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1]
            return bool(newest.meta.state_dict()["learner"]["events_trained"] == EVENTS + MORE)

        assert job.wait_until(lambda j: j.commits > 0 and trained_all(j), 240), "".join(job.lines[-40:])
        job.stop()
        job.finish(120)
        assert len(job.log("received SIGTERM")) == 3 and len(job.log("stopped: model v")) == 3
        assert job.log(f"restored model {name} v{snapshots[-1].meta.version} ")
        assert job.partitions == {0: [0], 1: [1], 2: [2]}
        snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        assert_history_tiles(snapshots, topic, ends)
        assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == EVENTS + MORE
        counted = newest_state(snapshots)["features.item.sums"][:, EVENTS_SUM]  # restored whole by every rank
        assert counted.sum() == EVENTS + MORE
        assert len(_letters(kafka_bootstrap, settings.dead_letter.topic)) == 6  # not again on restore

        # more ranks than partitions: refused before anything is spawned
        four = subprocess.run(
            [sys.executable, "-m", "stream_learner", "run", "--config", str(config), "--workers", "4"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert four.returncode == 2, four.stderr
        assert "4 ranks, but" in four.stderr and "3 partitions" in four.stderr
        assert "rank 0 of" not in four.stderr
    finally:
        for j in jobs:
            j.kill()
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_topics([settings.snapshot.topic, settings.dead_letter.topic]).values():
            future.result(60)


def _letters(bootstrap: str, topic: str) -> list[tuple[str, bytes]]:
    """The committed dead letters: (source partition, value)."""
    return [
        (dict(m.headers())["stream-learner.source.partition"].decode(), m.value())
        for m in read_all(bootstrap, topic)
    ]
