"""Rotating the snapshot signing key as docs/operations.md says, across the real broker, learner
restarts and a subscriber that keeps serving throughout: readers get ``NEW,OLD``; the learner restarts
with ``signing_key = NEW`` and ``verify_key = OLD`` and restores its OLD-signed chain; after its next
full snapshot OLD is dropped everywhere. A reader that knows only OLD refuses what NEW signed."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from stream_learner.serving import ModelSubscriber
from stream_learner.snapshots import signing
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, learner_settings, read_snapshots

EVENTS = 1500  # 1.5 s of event time a batch: one-second windows, a snapshot each, full every 2


def _learn(settings, topic: str, seed: int):
    """Produce a batch after the previous one and run the learner over it until it is idle."""
    produce_synthetic(
        settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=seed)
    )
    with AppThread(settings, exit_when_idle=True) as run:
        return run.join(120)


def _subscriber(settings, verify_key: str) -> tuple[ModelSubscriber, CollectorRegistry]:
    registry = CollectorRegistry()
    kafka, topic, name = settings.kafka, settings.snapshot.topic, settings.model.name
    subscriber = ModelSubscriber(
        kafka, topic, name, registry=registry, verify_key=verify_key, require_signature=True
    )
    return subscriber, registry


def _refused(registry: CollectorRegistry, model: str) -> float:
    return (
        registry.get_sample_value(
            "stream_learner_subscriber_snapshots_refused_total", {"model": model, "reason": "signature"}
        )
        or 0.0
    )


def test_the_signing_key_rotates_without_a_refusal_or_a_gap_in_serving(kafka_bootstrap, new_topic):
    old_private, old_public = signing.generate()
    new_private, new_public = signing.generate()
    topic = new_topic("events", partitions=1)
    snapshot = {"every_windows": 1, "full_every": 2, "require_signature": True}
    before = learner_settings(kafka_bootstrap, topic, snapshot={**snapshot, "signing_key": old_private})
    model = before.model.name

    first = _learn(before, topic, seed=1)
    serving, serving_metrics = _subscriber(before, f"{new_public},{old_public}")  # 1. readers first
    with serving.start(wait=60):
        assert serving.version == first.version

        # 2. the learner: signs with NEW, still accepts OLD, so it restores its OLD-signed chain
        during = before.model_copy(
            update={
                "snapshot": before.snapshot.model_copy(
                    update={"signing_key": SecretStr(new_private), "verify_key": old_public}
                )
            }
        )
        second = _learn(during, topic, seed=2)
        assert second.restored_version == first.version and second.version > first.version
        assert serving.wait_for_version(second.version, 60)

        # 3. past the learner's next full snapshot: OLD dropped everywhere
        after = during.model_copy(
            update={"snapshot": during.snapshot.model_copy(update={"verify_key": None})}
        )
        third = _learn(after, topic, seed=3)
        assert third.restored_version == second.version  # restored with NEW alone
        assert serving.wait_for_version(third.version, 60)
        assert _refused(serving_metrics, model) == 0  # nothing refused while the key changed

    history = read_snapshots(kafka_bootstrap, before.snapshot.topic)
    newest_full = max(s.meta.version for s in history if s.meta.kind == "FULL")
    assert newest_full > second.version  # the chain served last was signed by NEW from its full up

    fresh, _ = _subscriber(after, new_public)  # a reader that knows only NEW
    with fresh.start(wait=60):
        assert fresh.version == third.version
    stale, stale_metrics = _subscriber(before, old_public)  # one that knows only OLD
    with stale.start(wait=10):
        deadline = time.monotonic() + 10
        while _refused(stale_metrics, model) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stale.version is None or stale.version <= first.version
        assert _refused(stale_metrics, model) > 0
