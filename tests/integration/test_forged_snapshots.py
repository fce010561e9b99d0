"""Forged and damaged snapshots on the real topic, against the learner's restore and the subscriber.

Each case of issue 9: a full snapshot with a valid checksum whose spec lacks ``fields``; one that fails
its checksum but claims version 2^63-1; one whose learner state does not restore (the learner must not
keep half of it); a copy of a genuine version relabelled as a newer one; a forged v1000 written among
genuine versions. The learner resumes from the newest genuine snapshot (nothing trained twice, nothing
skipped, versions continuing sensibly) and says what it refused in
``stream_learner_snapshots_refused_total{reason}``; with signing, relabelled, unsigned and foreign
snapshots are refused by the learner and the subscriber alike.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stream_learner.config import KafkaSettings, Settings
from stream_learner.errors import ConfigError, SnapshotError
from stream_learner.kafka.admin import ensure_topics
from stream_learner.learning.learner import Learner
from stream_learner.metrics import CollectorRegistry
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots import signing
from stream_learner.snapshots.format import (
    FORMAT_VERSION,
    Assembler,
    Snapshot,
    SnapshotMeta,
    decode_chunk,
    signed_message,
)
from stream_learner.snapshots.state import arrays
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.learning_support import assert_same_tensors
from tests.snapshot_support import messages, produce_raw, reencode
from tests.support import AppThread, committed_offsets, end_offsets, learner_settings, read_all, wait_for

PARTITIONS = 2
REFUSED = "stream_learner_snapshots_refused_total"


def _settings(bootstrap: str, topic: str, **snapshot: Any) -> Settings:
    return learner_settings(
        bootstrap,
        topic,
        model={"kind": "logistic"},
        # count windows: no event is ever late, so every event produced is trained, whatever the timing
        window={"kind": "count", "count": 500},
        snapshot={"every_windows": 1, "full_every": 3, **snapshot},
    )


def _train(settings: Settings, events: int, seed: int) -> CollectorRegistry:
    """Produce ``events`` live events (1 s of event time per thousand) and run the learner on them
    until it is idle; return its metrics."""
    produce_synthetic(
        settings.kafka, settings.input.topic, events, rate=2000, config=SyntheticConfig(seed=seed)
    )
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(180)
        return run.app.registry


History = list[tuple[list[bytes], Snapshot | None]]


def _history(bootstrap: str, topic: str) -> History:
    """Every snapshot on the topic in log order: its messages, and the snapshot when it assembles
    (envelopes that do not even decode are left out)."""
    out: History = []
    assembler, current = Assembler(), []
    for msg in read_all(bootstrap, topic):
        try:
            chunk = decode_chunk(msg.value())
        except SnapshotError:
            continue
        current = [msg.value()] if chunk.index == 0 else [*current, msg.value()]
        try:
            snap = assembler.add(chunk)
        except SnapshotError:
            out.append((current, None))
            continue
        if chunk.index == chunk.count - 1:
            out.append((current, snap))
    return out


def _newest_full(history: History) -> list[bytes]:
    return next(m for m, s in reversed(history) if s is not None and s.meta.kind == "FULL")


def _forge(values: list[bytes], **changes: Any) -> list[bytes]:
    return [reencode(v, **changes) for v in values]


def _assert_continues(history: History, mark: int, genuine_end: int, first_new: int, trained: int) -> None:
    """The learner's snapshots after the first ``mark`` of the log begin at version ``first_new``
    and their offset ranges continue those of version ``genuine_end``: nothing skipped, nothing
    trained twice."""
    end = next(s for _, s in history[:mark] if s is not None and s.meta.version == genuine_end)
    new = [s for _, s in history[mark:] if s is not None]
    assert new and new[0].meta.version == first_new, [s.meta.version for s in new]
    nxt = {r.partition: r.last + 1 for r in end.meta.offsets}
    for snap in new:
        for r in snap.meta.offsets:
            assert r.first == nxt[r.partition], f"v{snap.meta.version} {r}: gap or overlap"
            nxt[r.partition] = r.last + 1
    assert new[-1].meta.state_dict()["learner"]["events_trained"] == trained


def test_the_restore_passes_over_forged_newest_snapshots_and_keeps_the_version_sane(
    kafka_bootstrap, new_topic
):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = _settings(kafka_bootstrap, topic)
    _train(settings, 3000, seed=1)
    history = _history(kafka_bootstrap, settings.snapshot.topic)
    newest = max(s.meta.version for _, s in history if s is not None)
    full = _newest_full(history)
    spec = json.loads(decode_chunk(full[0]).meta.spec)
    del spec["fields"]
    forged = [
        # fails its checksum, claims the largest version Avro can hold
        _forge(full, version=(1 << 63) - 1, payload_sha256="0" * 64),
        # tensors that fit, a learner state that does not restore
        _forge(full, version=newest + 1, state=json.dumps({"learner": {"lr": "not a state"}})),
        # a valid checksum, a spec without fields
        _forge(full, version=newest + 2, spec=json.dumps(spec)),
    ]
    for values in forged:
        produce_raw(kafka_bootstrap, settings.snapshot.topic, settings.model.name.encode(), values)
    mark = len(_history(kafka_bootstrap, settings.snapshot.topic))

    registry = _train(settings, 1000, seed=2)  # restarts: restores, trains, publishes

    for reason in ("version", "spec", "state"):
        assert registry.get_sample_value(REFUSED, {"reason": reason}) == 1, reason
    # versions continue above the newest verified envelope that continues the history (the state
    # one: only the learner's restore refuses it), far below any overflow
    _assert_continues(_history(kafka_bootstrap, settings.snapshot.topic), mark, newest, newest + 2, 4000)
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, PARTITIONS) == ends


def test_snapshots_that_do_not_continue_the_chain_are_refused_by_the_learner_and_serving(
    kafka_bootstrap, new_topic
):
    """Issue 22, without signing: a forged newest snapshot at version exactly 2^62, one of another
    (self-consistent) model spec, one with NaN weights and one without the sparse optimiser's state.
    Each is refused with its reason by the learner's restart, which restores the genuine chain and
    numbers on from it (before: 2^62 was restored and every later version refused; the spec made
    every start exit 2; NaN weights were restored; the missing state restored as complete), and
    serving never serves the first three."""
    topic = new_topic("events", partitions=PARTITIONS)
    settings = _settings(kafka_bootstrap, topic)
    _train(settings, 3000, seed=11)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    serving_registry = CollectorRegistry()
    serving = ModelSubscriber(kafka, settings.snapshot.topic, settings.model.name, registry=serving_registry)
    other = settings.model_copy(update={"model": settings.model.model_copy(update={"user_buckets": 2048})})
    other_learner = Learner(other)

    def forged(newest: int, case: str) -> list[bytes]:
        full = next(
            s
            for _, s in reversed(_history(kafka_bootstrap, settings.snapshot.topic))
            if s and s.meta.kind == "FULL"
        )
        tensors, meta = full.tensors(), replace(full.meta, version=newest + 1)
        if case == "version":
            meta = replace(meta, version=1 << 62)
        elif case == "spec":
            tensors, meta = arrays(other_learner.tensors()), replace(meta, spec=other_learner.spec.to_json())
        elif case == "non_finite":
            tensors = {
                n: np.full_like(t, float("nan")) if n.startswith("model.") else t for n, t in tensors.items()
            }
        else:
            tensors = {n: t for n, t in tensors.items() if not n.startswith("optim.sparse.")}
        return messages(meta, tensors)

    with serving.start():
        trained = 3000
        for seed, (case, published) in enumerate(
            [("version", 1), ("spec", 1), ("non_finite", 2), ("missing_tensor", 2)], start=12
        ):
            history = _history(kafka_bootstrap, settings.snapshot.topic)
            newest = max(s.meta.version for _, s in history if s is not None and s.meta.version < 1 << 62)
            assert serving.wait_for_version(newest, 30)
            produce_raw(
                kafka_bootstrap, settings.snapshot.topic, settings.model.name.encode(), forged(newest, case)
            )
            mark = len(_history(kafka_bootstrap, settings.snapshot.topic))

            registry = _train(settings, 1000, seed=seed)  # restarts: refuses, restores, trains, publishes
            trained += 1000
            assert (registry.get_sample_value(REFUSED, {"reason": case}) or 0) >= 1, case
            # the genuine chain restored (offsets continue, every event once), numbered above the
            # newest snapshot that continues the history (the forged one, when only the learner refuses it)
            after = _history(kafka_bootstrap, settings.snapshot.topic)
            _assert_continues(after, mark, newest, newest + published, trained)
            if case != "missing_tensor":  # serving needs no optimiser state: that one it may serve
                refusals = serving_registry.get_sample_value(
                    "stream_learner_subscriber_snapshots_refused_total",
                    {"model": settings.model.name, "reason": case},
                )
                assert refusals and refusals >= 1, case
            assert serving.wait_for_version(after[-1][1].meta.version, 30), case
            assert np.isfinite(serving.score("u1", ["i1"])).all()
    with ModelSubscriber(kafka, settings.snapshot.topic, settings.model.name) as fresh:
        assert fresh.refresh() == after[-1][1].meta.version


def test_a_restore_that_fails_half_way_leaves_a_fresh_learner(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=1)
    settings = _settings(kafka_bootstrap, topic)
    ensure_topics(settings)
    learner = Learner(settings)
    tensors = {
        k: np.full_like(v, 0.5) if k.startswith("model.") else v for k, v in arrays(learner.tensors()).items()
    }
    meta = SnapshotMeta(
        model_name=settings.model.name,
        version=5,
        kind="FULL",
        spec=learner.spec.to_json(),
        created_ms=0,
        window_start_ms=0,
        window_end_ms=0,
        newest_event_ms=0,
        state=json.dumps({"learner": {"lr": "not a state"}}),
    )
    key = settings.model.name.encode()
    produce_raw(kafka_bootstrap, settings.snapshot.topic, key, messages(meta, tensors))

    with AppThread(settings) as run:
        wait_for(run.app.ready, 60, "the learner to be active")
        restored = run.app.learner
        assert restored is not None
        assert_same_tensors(restored.tensors(), Learner(settings).tensors())  # none of the refused values
        assert run.app.registry.get_sample_value(REFUSED, {"reason": "state"}) == 1
        run.stop()


def test_a_forged_v1000_among_genuine_versions_is_refused_and_said_so(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = _settings(kafka_bootstrap, topic, full_every=1000)  # v1 full, then deltas only
    group = settings.input.group_id
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    served: list[int] = []
    subscriber_registry = CollectorRegistry()
    subscriber = ModelSubscriber(
        kafka,
        settings.snapshot.topic,
        settings.model.name,
        registry=subscriber_registry,
        on_update=lambda m: served.append(m.version),
    )

    def produce_and_wait(events: int, seed: int) -> None:
        config = SyntheticConfig(seed=seed)
        produce_synthetic(settings.kafka, topic, events, rate=2000, config=config)
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == ends, 120, "commits")

    with subscriber.start(), AppThread(settings) as run:
        produce_and_wait(2000, seed=3)
        full = _newest_full(_history(kafka_bootstrap, settings.snapshot.topic))
        produce_raw(
            kafka_bootstrap, settings.snapshot.topic, settings.model.name.encode(), _forge(full, version=1000)
        )
        # unsigned and well formed, but far more than one version past the one before it
        wait_for(
            lambda: subscriber_registry.get_sample_value(
                "stream_learner_subscriber_snapshots_refused_total",
                {"model": settings.model.name, "reason": "version"},
            ),
            30,
            "the subscriber to refuse v1000, with a word",
        )
        produce_and_wait(2000, seed=4)  # the learner goes on: v(n+1)... after v1000 in the log
        versions = [s.meta.version for _, s in _history(kafka_bootstrap, settings.snapshot.topic) if s]
        followed = max(v for v in versions if v < 1000)
        assert subscriber.wait_for_version(followed, 30)  # serving follows the learner, not v1000
        assert subscriber.newest_version == followed
        run.stop()
    history = _history(kafka_bootstrap, settings.snapshot.topic)
    genuine = max(s.meta.version for _, s in history if s is not None and s.meta.version < 1000)

    # A restart reads the log backwards, past v1000 to the one full snapshot: v1000, followed by lower
    # versions, is not this history; neither restored nor counted (the next is genuine + 1, not 1001).
    registry = _train(settings, 1000, seed=5)
    assert registry.get_sample_value(REFUSED, {"reason": "version"}) == 1
    after = _history(kafka_bootstrap, settings.snapshot.topic)
    _assert_continues(after, len(history), genuine, genuine + 1, 5000)
    with ModelSubscriber(kafka, settings.snapshot.topic, settings.model.name) as fresh:
        assert fresh.refresh() == max(snap.meta.version for _, snap in after[len(history) :] if snap)


def test_with_signatures_relabelled_unsigned_and_foreign_snapshots_are_refused(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=PARTITIONS)
    private, public = signing.generate()
    settings = _settings(kafka_bootstrap, topic, signing_key=private, require_signature=True)
    _train(settings, 3000, seed=6)
    history = _history(kafka_bootstrap, settings.snapshot.topic)
    newest = max(s.meta.version for _, s in history if s is not None)
    check = signing.Verifier.of(public, required=True)
    assert check is not None
    for values, _ in history:  # every snapshot signed, and the signature checks out
        check(decode_chunk(values[0]))

    first_full = next(m for m, s in history if s is not None and s.meta.kind == "FULL")
    relabelled = _forge(first_full, version=newest + 1)  # the genuine signature of another version
    unsigned = _forge(_newest_full(history), version=newest + 2, format_version=FORMAT_VERSION)
    foreign_key = Ed25519PrivateKey.generate()
    first = decode_chunk(first_full[0])
    foreign_meta = replace(first.meta, version=newest + 3)
    foreign = _forge(
        first_full,
        version=newest + 3,
        signature=foreign_key.sign(signed_message(foreign_meta, first.sha256, first.size)),
    )
    for values in (relabelled, unsigned, foreign):
        produce_raw(kafka_bootstrap, settings.snapshot.topic, settings.model.name.encode(), values)
    mark = len(_history(kafka_bootstrap, settings.snapshot.topic))

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    registry = CollectorRegistry()
    with ModelSubscriber(
        kafka,
        settings.snapshot.topic,
        settings.model.name,
        registry,
        verify_key=public,
        require_signature=True,
    ) as subscriber:
        assert subscriber.refresh() == newest
    refusals = registry.get_sample_value(
        "stream_learner_subscriber_snapshots_refused_total",
        {"model": settings.model.name, "reason": "signature"},
    )
    assert refusals == 3

    learner_registry = _train(settings, 1000, seed=7)
    assert learner_registry.get_sample_value(REFUSED, {"reason": "signature"}) == 3
    _assert_continues(_history(kafka_bootstrap, settings.snapshot.topic), mark, newest, newest + 1, 4000)


def test_a_subscriber_that_requires_signatures_needs_a_key():
    with pytest.raises(ConfigError, match="verify_key"):
        ModelSubscriber(KafkaSettings(), "t", "m", require_signature=True)
