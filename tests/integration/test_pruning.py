"""Pruning through the real broker: a learner whose dynamic user table is smaller than its users
never holds more than its slots, its full snapshots show reclaimed slots free and reset, the
subscriber scores a pruned user as it scores an id it never saw, and a version whose windows pruned
replays byte for byte (the choice is a function of the stream)."""

from __future__ import annotations

import time

import numpy as np

from stream_learner.ingest.events import hash_id
from stream_learner.learning.features import FREE, OOV_ROW, DynamicField
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots.replay import replay
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, learner_settings, read_snapshots

USERS, SLOTS = 400, 128  # slot 0 of the table is the shared row of ids without one


def test_pruned_users_leave_the_snapshot_and_score_as_unseen(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=1)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        model={"kind": "fm", "table": "dynamic", "user_buckets": SLOTS + 1, "prune_fraction": 0.5},
        train={"device": "cpu", "deterministic": True},
        window={"size_seconds": 0.1},  # about 100 events and 90 users a window: many ids wait outside
        snapshot={"every_windows": 2, "full_every": 2},
    )
    config = SyntheticConfig(users=USERS, items=40, seed=3)
    produce_synthetic(settings.kafka, topic, 6_000, rate=1000, backfill=True, config=config)
    with ModelSubscriber(settings.kafka, settings.snapshot.topic, settings.model.name) as subscriber:
        subscriber.start()
        with AppThread(settings, exit_when_idle=True) as run:
            summary = run.join(120)
        assert subscriber.wait_for_version(summary.version, 60)
        learner = run.app.learner
        assert learner is not None
        table = learner.features.fields[0]
        assert isinstance(table, DynamicField) and table.stats.pruned > 0
        assert table.stats.in_use <= SLOTS

        snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
        fulls = [s.tensors() for s in snapshots if s.meta.kind == "FULL"]
        freed = 0
        for tensors in fulls:
            last_seen = tensors["features.user.last_seen_ms"]
            free = np.flatnonzero(last_seen == FREE)
            free = free[free != OOV_ROW]
            freed += len(free)
            assert len(last_seen) - 1 - len(free) <= SLOTS
            assert (tensors["features.user.keys"][free] == 0).all()
            assert (tensors["features.user.sums"][free] == 0).all()  # no real-time sums of the old id
            assert (tensors["model.linear.weights.user.weight"][free] == 0).all()
            for name, value in tensors.items():  # no optimiser state of the old id
                if name.startswith("optim.sparse.") and ".user.weight." in name and value.ndim:
                    assert (value[free] == 0).all(), name
        assert freed > 0, "no full snapshot showed a reclaimed slot free"

        held = set(table.keys[table.last_seen_ms != FREE].tolist())  # as of the version served
        pruned = [f"u{k}" for k in range(USERS) if hash_id(f"u{k}") not in held]
        assert len(pruned) >= USERS - SLOTS
        items = [f"i{k}" for k in range(10)]
        at = int(time.time() * 1000)
        unseen = subscriber.score("never-seen", items, at_ms=at)
        for user in pruned:
            np.testing.assert_array_equal(subscriber.score(user, items, at_ms=at), unseen)
        kept = next(f"u{k}" for k in range(USERS) if hash_id(f"u{k}") in held)
        assert not np.array_equal(subscriber.score(kept, items, at_ms=at), unseen)

    last_delta = [s for s in snapshots if s.meta.kind == "DELTA"][-1]  # the table full long before
    report = replay(settings, last_delta.meta.version)
    assert report.identical and report.windows > 0, report
