"""A distilled student through the real broker: published beside the model in the same transactions,
signed, served by the subscriber under its own name, and restored with the model at the same offsets."""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np
from prometheus_client import CollectorRegistry

from stream_learner.config import Settings
from stream_learner.scoring.spec import ModelSpec
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots import signing
from stream_learner.snapshots.format import Snapshot
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, learner_settings, read_snapshots

EVENTS = 4_000


def _settings(bootstrap: str, topic: str, private: str) -> Settings:
    return learner_settings(
        bootstrap,
        topic,
        model={"kind": "fm", "embedding_dim": 8},
        snapshot={"every_windows": 1, "full_every": 3, "signing_key": private, "require_signature": True},
        distill={"enabled": True, "embedding_dim": 2, "alpha": 0.5},
    )


def _learn(settings: Settings, topic: str, seed: int) -> AppThread:
    produce_synthetic(
        settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=seed)
    )
    run = AppThread(settings, exit_when_idle=True)
    with run:
        run.join(120)
    return run


def _of(snapshots: list[Snapshot], name: str) -> list[Snapshot]:
    return [s for s in snapshots if s.meta.model_name == name]


def _assert_beside(teacher: list[Snapshot], student: list[Snapshot]) -> None:
    """Every student version ends at the offsets of a teacher version committed with it, and the
    student's versions make one chain: each delta continues the version before it."""
    assert student and teacher
    ends = {tuple(sorted(s.meta.resume_offsets().items())) for s in teacher}
    for snap in student:
        assert tuple(sorted(snap.meta.resume_offsets().items())) in ends
    for before, after in itertools.pairwise(student):
        assert after.meta.version == before.meta.version + 1
        if after.meta.kind == "DELTA":
            assert after.meta.base_version == before.meta.version
    assert student[-1].meta.resume_offsets() == teacher[-1].meta.resume_offsets()


def test_the_student_is_published_beside_the_model_and_served_under_its_name(
    kafka_bootstrap, new_topic, caplog
) -> None:
    private, public = signing.generate()
    topic = new_topic("events", partitions=2)
    settings = _settings(kafka_bootstrap, topic, private)
    name, student_name = settings.model.name, settings.distill.name_for(settings.model.name)

    first = _learn(settings, topic, seed=3)
    summary = first.stop()
    registry = first.app.registry
    assert (
        0
        < (registry.get_sample_value("stream_learner_student_validation_auc", {"student": student_name}) or 0)
        <= 1
    )

    history = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    teacher, student = _of(history, name), _of(history, student_name)
    assert len(teacher) + len(student) == len(history)
    assert {s.meta.kind for s in student} == {"FULL", "DELTA"}
    _assert_beside(teacher, student)
    spec = ModelSpec.from_json(student[-1].meta.spec)
    assert spec.embedding_dim == 2 and spec.fields == ModelSpec.from_json(teacher[-1].meta.spec).fields

    # the subscriber serves each model by its name, signatures checked
    served = {}
    for model in (name, student_name):
        subscriber = ModelSubscriber(
            settings.kafka,
            settings.snapshot.topic,
            model,
            registry=CollectorRegistry(),
            verify_key=public,
            require_signature=True,
            input_settings=settings,
        )
        with subscriber.start(wait=60):
            expected = (teacher if model == name else student)[-1].meta.version
            assert subscriber.wait_for_version(expected, 60)
            items = list(subscriber.recent_items())
            assert len(items) > 20
            at = int(time.time() * 1000)
            served[model] = subscriber.score("u5", items, at_ms=at)
            assert np.all((served[model] > 0) & (served[model] < 1))
    assert served[name].shape == served[student_name].shape
    assert not np.allclose(served[name], served[student_name])  # two models, not one twice
    assert summary.version == teacher[-1].meta.version

    # a restart restores both at the same offsets; the student continues its chain
    caplog.set_level(logging.INFO, logger="stream_learner.snapshots.companion")
    second = _learn(settings, topic, seed=4)
    second.stop()
    assert any("restored student" in r.getMessage() for r in caplog.records)
    history = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    teacher_after, student_after = _of(history, name), _of(history, student_name)
    assert len(student_after) > len(student)
    _assert_beside(teacher_after, student_after)
    restarted = student_after[len(student)]
    assert restarted.meta.version == student[-1].meta.version + 1


def test_a_student_without_its_chain_starts_fresh_beside_the_restored_model(
    kafka_bootstrap, new_topic, caplog
) -> None:
    private, _ = signing.generate()
    topic = new_topic("events", partitions=1)
    alone = learner_settings(
        kafka_bootstrap,
        topic,
        model={"kind": "fm", "embedding_dim": 8},
        snapshot={"every_windows": 1, "full_every": 3, "signing_key": private},
    )
    _learn(alone, topic, seed=5).stop()
    settings = alone.model_copy(update={"distill": _settings(kafka_bootstrap, topic, private).distill})
    caplog.set_level(logging.INFO, logger="stream_learner.snapshots.companion")
    run = _learn(settings, topic, seed=6)
    assert run.stop().restored_version is not None  # the model was restored
    assert any("starts fresh" in r.getMessage() for r in caplog.records)
    history = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    student = _of(history, settings.distill.name_for(settings.model.name))
    assert student and student[0].meta.kind == "FULL" and student[0].meta.version == 1
    _assert_beside(_of(history, settings.model.name), student)


def test_the_students_serving_form_goes_out_beside_its_training_snapshots(kafka_bootstrap, new_topic) -> None:
    private, public = signing.generate()
    topic = new_topic("events", partitions=1)
    base = _settings(kafka_bootstrap, topic, private)
    settings = base.model_copy(
        update={"serving": base.serving.model_copy(update={"publish_form": True, "precision": "int8"})}
    )
    _learn(settings, topic, seed=7).stop()
    student_name = settings.distill.name_for(settings.model.name)
    form_topic = settings.serving.form_topic_for(settings.snapshot.topic)
    training = _of(read_snapshots(kafka_bootstrap, settings.snapshot.topic), student_name)
    serving = _of(read_snapshots(kafka_bootstrap, form_topic), student_name)
    assert training and [s.meta.form for s in serving] == ["serving"] * len(training)
    for a, b in zip(training, serving, strict=True):
        assert (a.meta.version, a.meta.kind, a.meta.offsets) == (b.meta.version, b.meta.kind, b.meta.offsets)
    subscribers = [
        ModelSubscriber(
            settings.kafka,
            t,
            student_name,
            registry=CollectorRegistry(),
            verify_key=public,
            require_signature=True,
            follow_input=False,
        )
        for t in (form_topic, settings.snapshot.topic)
    ]
    with subscribers[0] as small, subscribers[1] as whole:
        assert small.refresh() == whole.refresh() == training[-1].meta.version
        at = training[-1].meta.newest_event_ms
        items = list(whole.recent_items())[:50]
        np.testing.assert_allclose(
            small.score("u3", items, at_ms=at), whole.score("u3", items, at_ms=at), atol=0.02
        )
