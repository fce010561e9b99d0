"""Catch-up through the real broker: a learner that starts with a backlog trains it with larger
mini-batches and fewer snapshots, returns to its normal settings once the backlog is gone (with
hysteresis), and neither loses nor repeats an event on the way."""

from __future__ import annotations

import time

from stream_learner.config import KafkaSettings
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, assert_history_tiles, end_offsets, learner_settings, read_snapshots

BACKLOG = 60_000
LIVE = 1_000
PARTITIONS = 2
MULTIPLIER = 8


def test_a_backlog_is_trained_in_catch_up_mode_and_live_events_in_the_normal_one(kafka_bootstrap, new_topic):
    topic = new_topic("catchup-events", partitions=PARTITIONS)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        # small mini-batches and two passes: the backlog takes seconds to train, as a real one would
        train={"batch_size": 64, "passes": 2},
        snapshot={"every_windows": 1, "full_every": 5},
        catchup={
            "enabled": True,
            "enter_records": 5_000,
            "exit_records": 1_000,
            "enter_seconds": 1e6,  # the records decide here; event-time lag is tested in tests/unit
            "exit_seconds": 1e6,
            "batch_multiplier": MULTIPLIER,
            "snapshot_factor": 10,
        },
    )
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    produce_synthetic(kafka, topic, BACKLOG, rate=2_000, backfill=True, config=SyntheticConfig(seed=5))
    modes: list[float] = []
    with AppThread(settings) as run:

        def mode() -> float:
            return run.app.registry.get_sample_value("stream_learner_catchup_mode") or 0.0

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (1.0 in modes and modes[-1] == 0.0):
            modes.append(mode())
            time.sleep(0.05)
        assert 1.0 in modes and modes[-1] == 0.0, modes[-20:]
        # the backlog is gone: live events, trained with the ordinary mini-batches
        produce_synthetic(kafka, topic, LIVE, rate=500, config=SyntheticConfig(seed=6))
        time.sleep(4)  # the last live window closes on idleness
        run.stop()
    assert mode() == 0.0

    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    assert_history_tiles(snapshots, topic, ends)
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == BACKLOG + LIVE
    windows = [w for s in snapshots for w in s.meta.state_dict()["lineage"]["windows"]]
    multipliers = [w["batch_multiplier"] for w in windows]
    assert multipliers[0] == MULTIPLIER and multipliers[-1] == 1, multipliers
    # snapshots came less often while catching up: some snapshot holds several catch-up windows
    caught_up = [s.meta.state_dict()["lineage"]["windows"] for s in snapshots]
    assert max(sum(w["batch_multiplier"] == MULTIPLIER for w in ws) for ws in caught_up) >= 3
