"""The quality gate and rollback through the real broker.

A subscriber serves only snapshots that pass, folding held deltas into a copy of the state; and a
poisoning incident (a stretch of events whose labels are flipped) end to end: the learner's gate
holds the damaged snapshots, serving keeps the last good model, a rollback through the command line
restores it as a new full version that continues from the current frontier, and the model serving
scores with does better than an ungated run's on clean events.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import numpy as np
from prometheus_client import CollectorRegistry

from stream_learner.cli import main
from stream_learner.config import KafkaSettings, Settings
from stream_learner.ingest.codec import encode_event
from stream_learner.kafka.producer import EventProducer
from stream_learner.learning.quality import roc_auc
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots import history
from stream_learner.snapshots.format import SnapshotMeta
from stream_learner.snapshots.gate import verdict_of
from stream_learner.tools.synthetic import SyntheticBatch, SyntheticConfig, SyntheticStream
from tests.snapshot_support import (
    SNAPSHOT_TOPIC_CONFIG,
    logistic_delta,
    logistic_spec,
    logistic_state,
    messages,
    meta,
    produce_raw,
)
from tests.support import (
    AppThread,
    assert_history_tiles,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_snapshots,
    wait_for,
)

WINDOW_EVENTS = 2000  # one-second windows
CLEAN, POISONED, AFTER = 16, 6, 3  # windows of each stretch


def _gated(meta_: SnapshotMeta, verdict: str) -> SnapshotMeta:
    state = {**meta_.state_dict(), "gate": {"verdict": verdict, "reason": "test"}}
    return dataclasses.replace(meta_, state=json.dumps(state))


def test_the_subscriber_serves_passing_snapshots_and_folds_held_ones_aside(kafka_bootstrap, new_topic):
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    model = f"m-{uuid.uuid4().hex[:8]}"
    spec = logistic_spec()
    registry = CollectorRegistry()

    def publish(version: int, kind: str, verdict: str) -> None:
        value = version / 10
        tensors = logistic_state(spec, value) if kind == "FULL" else logistic_delta(spec, value)
        m = _gated(meta(model, version, kind, spec), verdict)
        produce_raw(kafka_bootstrap, topic, model.encode(), messages(m, tensors))

    def bias(subscriber: ModelSubscriber) -> float:
        with subscriber._lock.read():
            served = subscriber._served
            assert served is not None
            return served.fold.tensors["model.bias"].item()

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    for version, kind, verdict in [(1, "FULL", "pass"), (2, "DELTA", "pass"), (3, "DELTA", "held")]:
        publish(version, kind, verdict)
    seen: list[int] = []
    with (
        ModelSubscriber(
            kafka, topic, model, registry=registry, on_update=lambda m: seen.append(m.version)
        ) as gated,
        ModelSubscriber(kafka, topic, model, registry=CollectorRegistry(), serve_held=True) as everything,
    ):
        gated.start(wait=30)
        everything.start(wait=30)
        # started after a held snapshot: serves the newest that passed, follows the held one
        assert gated.wait_for_version(2, 30) and gated.newest_version == 3
        assert bias(gated) == np.float32(-0.4)
        publish(4, "DELTA", "held")
        wait_for(lambda: gated.newest_version == 4, 30, "the held delta to be followed")
        assert gated.version == 2 and bias(gated) == np.float32(-0.4)
        publish(5, "DELTA", "pass")  # builds on the held ones: served as soon as it passes
        assert gated.wait_for_version(5, 30) and bias(gated) == np.float32(-1.0)
        publish(6, "FULL", "held")
        publish(7, "DELTA", "held")
        wait_for(lambda: gated.newest_version == 7, 30, "the held full snapshot and delta")
        assert gated.version == 5 and bias(gated) == np.float32(-1.0)
        publish(8, "DELTA", "pass")
        assert gated.wait_for_version(8, 30) and bias(gated) == np.float32(-1.6)
        assert seen == [2, 5, 8]
        held = registry.get_sample_value("stream_learner_subscriber_snapshots_held_total", {"model": model})
        assert held == 4  # v3 (at start), v4, v6, v7
        assert everything.wait_for_version(8, 30) and bias(everything) == np.float32(-1.6)


def _produce(kafka: KafkaSettings, topic: str, batch: SyntheticBatch, flip: bool) -> None:
    """Events with the generator's labels, or (``flip``) the opposite ones: a producer bug that
    logs every impression as a click and every click as an impression."""
    producer = EventProducer(kafka, topic)
    for record in batch.records():
        if flip:
            record["event_type"] = "impression" if record["event_type"] in ("click", "purchase") else "click"
        producer.send(str(record["user_id"]).encode(), encode_event(record))
    assert producer.close().delivered == len(batch)


def _auc(subscriber: ModelSubscriber, test: SyntheticBatch) -> float:
    scores = np.array([subscriber.score(u, [i])[0] for u, i in zip(test.user_id, test.item_id, strict=True)])
    return roc_auc(test.label, scores)


def _settings(bootstrap: str, topic: str, **serving: object) -> Settings:
    return learner_settings(
        bootstrap,
        topic,
        model={"kind": "logistic"},
        snapshot={"every_windows": 1, "full_every": 5},
        window={"idle_timeout_seconds": 1.0},
        serving=dict(serving),
    )


def test_a_poisoned_stretch_is_held_serving_keeps_the_last_good_model_and_rollback_restores_it(
    kafka_bootstrap, new_topic, tmp_path, capsys
):
    topic = new_topic("poison-events", partitions=1)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    stream = SyntheticStream(SyntheticConfig(users=300, items=100, seed=1))
    start_ms = (int(time.time()) - 600) * 1000  # on a second: the poison starts with a window
    step = 1000 / WINDOW_EVENTS
    poison_ms = start_ms + CLEAN * 1000
    _produce(kafka, topic, stream.batch(CLEAN * WINDOW_EVENTS, start_ms, step), flip=False)
    _produce(kafka, topic, stream.batch(POISONED * WINDOW_EVENTS, poison_ms, step), flip=True)
    test = stream.batch(3000, 0, 1)  # clean events to score, never trained on

    gated = _settings(kafka_bootstrap, topic, max_auc_drop=0.05, reference_snapshots=5, min_events=1000)
    ungated = _settings(kafka_bootstrap, topic)
    with AppThread(ungated, exit_when_idle=True) as run:
        run.join(180)
    with ModelSubscriber(
        kafka, ungated.snapshot.topic, ungated.model.name, registry=CollectorRegistry()
    ) as sub:
        assert sub.refresh() is not None
        ungated_auc = _auc(sub, test)

    config = tmp_path / "gated.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n[input]\ntopic = "{topic}"\n'
        f'[snapshot]\ntopic = "{gated.snapshot.topic}"\n[model]\nname = "{gated.model.name}"\n'
    )
    registry = CollectorRegistry()
    with (
        ModelSubscriber(kafka, gated.snapshot.topic, gated.model.name, registry=registry) as serving,
        AppThread(gated) as run,
    ):
        serving.start()
        ends = end_offsets(kafka_bootstrap, topic, 1)
        group = gated.input.group_id
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == ends, 120, "the backlog")
        snapshots = read_snapshots(kafka_bootstrap, gated.snapshot.topic)
        wait_for(lambda: serving.newest_version == snapshots[-1].meta.version, 60, "serving to follow")

        # every snapshot with poisoned windows is held; none before
        trained = [s for s in snapshots if s.meta.metrics.get("prequential_events", 0) > 0]
        verdicts = [(s.meta.window_start_ms >= poison_ms, verdict_of(s.meta)[0]) for s in trained]
        assert [v for poisoned, v in verdicts if poisoned] == ["held"] * POISONED, verdicts
        assert {v for poisoned, v in verdicts if not poisoned} == {"pass"}, verdicts
        good = max(s.meta.version for s in snapshots if s.meta.window_end_ms <= poison_ms)
        assert verdict_of(history.find(snapshots, good).meta)[0] == "pass"
        # serving keeps the last good model, and it scores clean events far better than the ungated
        assert serving.version == good and serving.newest_version == snapshots[-1].meta.version
        served_auc = _auc(serving, test)
        assert served_auc > ungated_auc + 0.1, (served_auc, ungated_auc)
        metrics = run.app.registry
        assert metrics.get_sample_value("stream_learner_snapshots_held_total") >= POISONED
        assert metrics.get_sample_value("stream_learner_gate_held") == 1
        assert (
            registry.get_sample_value(
                "stream_learner_subscriber_snapshots_held_total", {"model": gated.model.name}
            )
            >= POISONED
        )

        capsys.readouterr()
        assert main(["snapshots", "list", "--config", str(config), "--last", "2"]) == 0
        assert all(line.endswith("HELD") for line in capsys.readouterr().out.splitlines())

        # the operator rolls back to the last good version
        assert main(["rollback", "--config", str(config), "--to-version", str(good), "--wait", "60"]) == 0
        newest = snapshots[-1].meta.version
        assert f"rolled back: v{newest + 1} (full) carries the state of v{good}" in capsys.readouterr().out
        assert serving.wait_for_version(newest + 1, 30)
        rolled = read_snapshots(kafka_bootstrap, gated.snapshot.topic)[-1]
        assert rolled.meta.kind == "FULL" and rolled.meta.state_dict()["rollback"]["to_version"] == good
        assert verdict_of(rolled.meta)[0] == "pass"
        state, _ = history.state_at(read_snapshots(kafka_bootstrap, gated.snapshot.topic), good)
        tensors = rolled.tensors()
        restored = [n for n in state.tensors if n.startswith(("model.", "features."))]  # with the counts
        assert any(n.startswith("features.") for n in restored), sorted(state.tensors)
        assert all(np.array_equal(tensors[n], state.tensors[n]) for n in restored)
        # v(good)'s model and features again: the features then follow the input after the rollback,
        # where before it they followed it after v(good), the poisoned stretch included
        assert abs(_auc(serving, test) - served_auc) < 0.01
        assert metrics.get_sample_value("stream_learner_rollbacks_total", {"result": "applied"}) == 1

        # clean events again: the learner goes on from the frontier, and its snapshots pass
        after_ms = poison_ms + POISONED * 1000
        _produce(kafka, topic, stream.batch(AFTER * WINDOW_EVENTS, after_ms, step), flip=False)
        ends = end_offsets(kafka_bootstrap, topic, 1)
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == ends, 120, "the new events")
        last = read_snapshots(kafka_bootstrap, gated.snapshot.topic)[-1].meta.version
        assert serving.wait_for_version(last, 30), "the snapshots after the rollback are not served"
        summary = run.stop()
    assert summary.windows_trained >= CLEAN + POISONED + AFTER - 1
    final = read_snapshots(kafka_bootstrap, gated.snapshot.topic)
    assert_history_tiles(final, topic, ends)  # nothing trained twice, nothing skipped
    # the model holds what v{good} held and the clean events after the rollback, not the poisoned ones
    trained_then = history.find(final, good).meta.state_dict()["learner"]["events_trained"]
    assert final[-1].meta.state_dict()["learner"]["events_trained"] == trained_then + AFTER * WINDOW_EVENTS
