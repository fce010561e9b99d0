"""The distilled student: its targets, its training beside the teacher, its state copies, its
settings; and the teacher, bit for bit the same with a student beside it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from stream_learner.learning.learner import Learner
from stream_learner.learning.student import Student, mix
from stream_learner.runtime.worker import Worker
from stream_learner.snapshots import delta
from stream_learner.snapshots.companion import Companion
from stream_learner.snapshots.format import PartitionRange, SnapshotMeta, encode_payload
from stream_learner.snapshots.state import StateCopier, StateCopy
from tests.learning_support import small_settings, windows

DISTILL = {"enabled": True, "embedding_dim": 2, "alpha": 0.7}


def test_mix_weighs_the_teacher_by_alpha_and_the_labels_by_the_rest() -> None:
    labels = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    teacher = np.array([0.2, 0.9, 0.4, 0.6], np.float32)
    np.testing.assert_allclose(mix(labels, teacher, 0.25), 0.25 * teacher + 0.75 * labels, rtol=1e-6)
    np.testing.assert_array_equal(mix(labels, teacher, 0.0), labels)
    np.testing.assert_allclose(mix(labels, teacher, 1.0), teacher)
    assert mix(labels, teacher, 0.5).dtype == np.float32
    with pytest.raises(ValueError, match="3 labels for 4"):
        mix(labels[:3], teacher, 0.5)


def test_the_mixed_target_gives_the_mixed_loss_and_its_gradient() -> None:
    """Training towards the mixed target is training on alpha x the loss against the teacher + (1 -
    alpha) x the loss against the labels (cross-entropy is linear in its target)."""
    rng = np.random.default_rng(0)
    labels = (rng.random(64) < 0.4).astype(np.float32)
    teacher = rng.random(64).astype(np.float32)
    alpha = 0.3
    logits = torch.tensor(rng.normal(size=64), dtype=torch.float32, requires_grad=True)
    bce = nn.functional.binary_cross_entropy_with_logits
    mixed = bce(logits, torch.from_numpy(mix(labels, teacher, alpha)))
    (mixed_grad,) = torch.autograd.grad(mixed, logits)
    parts = alpha * bce(logits, torch.from_numpy(teacher)) + (1 - alpha) * bce(
        logits, torch.from_numpy(labels)
    )
    (parts_grad,) = torch.autograd.grad(parts, logits)
    assert float(mixed.detach()) == pytest.approx(float(parts.detach()), rel=1e-6)
    torch.testing.assert_close(mixed_grad, parts_grad)


def test_the_student_trains_on_the_teachers_outputs_with_its_rows_and_inputs() -> None:
    settings = small_settings(distill=DISTILL)
    teacher = Learner(settings)
    evaluated = []
    student = Student(settings, teacher, evaluated.append)
    assert student.name == f"{settings.model.name}.student"
    assert student.spec.fields == teacher.spec.fields and student.spec.extra == teacher.spec.extra
    assert student.spec.embedding_dim == 2 and teacher.spec.embedding_dim == 4
    before = {k: v.clone() for k, v in student.trainer.model.state_dict().items()}
    seen = []
    for w in windows(6):
        result = teacher.process(w)
        lesson = teacher.lesson
        assert lesson is not None and lesson.trained_rows is not None
        seen.append((lesson, result))
        taught = student.learn(result)
        assert taught is not None and taught.step is not None and taught.step.applied
        # scored on the events the teacher scored, with the same inputs
        assert taught.evaluation.count == result.evaluation.count
        assert lesson.scored_inputs is not None and lesson.scored_inputs.shape[1] == 7
    assert len(evaluated) == 6 and all(0 < e.auc <= 1 for e in evaluated)
    assert student.events_trained == teacher.events_trained == 6_000
    after = student.trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the student learnt the stream: better than chance on the last window, before training on it
    assert evaluated[-1].auc > 0.6


def test_alpha_decides_what_the_student_learns() -> None:
    """With alpha 1 the student learns the teacher's probabilities; with alpha 0 the labels: the
    same windows give other weights."""
    weights = []
    for alpha in (0.0, 1.0):
        settings = small_settings(distill=DISTILL | {"alpha": alpha})
        teacher = Learner(settings)
        student = Student(settings, teacher)
        for w in windows(3):
            student.learn(teacher.process(w))
        weights.append(student.trainer.model.state_dict())
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_window_the_teacher_skips_is_scored_but_not_trained_by_the_student() -> None:
    settings = small_settings(distill=DISTILL, guard={"loss_spike_factor": 1.01, "max_consecutive_skips": 5})
    teacher = Learner(settings)
    student = Student(settings, teacher)
    ws = list(windows(8))
    for w in ws[:6]:
        student.learn(teacher.process(w))
    events = ws[6].events
    poisoned = replace(ws[6], events=replace(events, label=1 - events.label))
    before = {k: v.clone() for k, v in student.trainer.model.state_dict().items()}
    result = teacher.process(poisoned)
    assert result.skipped == "loss_spike"
    taught = student.learn(result)
    assert taught is not None and taught.step is None
    after = student.trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _run(settings, with_student: bool) -> tuple[list[StateCopy], Student | None]:
    teacher = Learner(settings)
    student = Student(settings, teacher) if with_student else None
    copier = StateCopier(teacher, full_every=3, delta_first=True)
    student_copier = StateCopier(student, full_every=3, delta_first=True) if student else None
    worker = Worker(teacher, copier, student, student_copier)
    copies = []
    with worker:
        for w in windows(7):
            worker.submit(w, snapshot=True)
        while len(copies) < 7:
            for out in worker.outputs(timeout=30):
                assert out.error is None, out.error
                assert out.state is not None
                copies.append(out.state)
    return copies, student


def test_the_teacher_publishes_the_same_bytes_with_a_student_beside_it() -> None:
    settings = small_settings(distill=DISTILL)
    alone, _ = _run(small_settings(), with_student=False)
    beside, student = _run(settings, with_student=True)
    assert student is not None and student.events_trained > 0
    assert len(alone) == len(beside) == 7
    for a, b in zip(alone, beside, strict=True):
        assert a.companion is None and b.companion is not None
        assert a.kind == b.kind
        assert encode_payload(a.tensors).sha256 == encode_payload(b.tensors).sha256
        assert json.dumps(a.learner_state, sort_keys=True) == json.dumps(b.learner_state, sort_keys=True)
        assert (a.full is None) == (b.full is None)
        if a.full is not None and b.full is not None:
            assert encode_payload(a.full).sha256 == encode_payload(b.full).sha256


def test_the_students_deltas_rebuild_its_whole_state() -> None:
    """Each delta of the student, applied to the state before it, gives its whole state, the
    teacher's feature arrays included (their changed rows are marked for the student too)."""
    copies, _ = _run(small_settings(distill=DISTILL), with_student=True)
    students = [c.companion for c in copies]
    state: dict[str, np.ndarray] | None = None
    for copy in students:
        assert copy is not None
        if copy.kind == "FULL":
            state = {k: v.copy() for k, v in copy.tensors.items()}
            continue
        assert state is not None
        delta.apply(state, copy.tensors)
        if copy.full is not None:
            assert sorted(state) == sorted(copy.full)
            for name, whole in copy.full.items():
                np.testing.assert_array_equal(state[name], whole, err_msg=name)
            state = {k: v.copy() for k, v in copy.full.items()}
    assert state is not None and any(k.startswith("features.") for k in state)
    widths = {
        v.shape[1] for k, v in state.items() if k.startswith("model.") and v.ndim == 2 and len(v) == 512
    }
    assert widths == {1, 2}  # the user's first-order weights and its 2-wide embeddings


def test_the_companion_gives_the_students_versions_the_teachers_offsets() -> None:
    copies, student = _run(small_settings(distill=DISTILL), with_student=True)
    assert student is not None
    companion = Companion(name=student.name, spec_json=student.spec.to_json(), max_message_bytes=1 << 20)
    teacher = SnapshotMeta(
        model_name="t",
        version=12,
        kind="DELTA",
        spec="{}",
        created_ms=1,
        window_start_ms=0,
        window_end_ms=3000,
        newest_event_ms=2999,
        offsets=(PartitionRange("in", 0, 10, 19),),
    )
    first = companion.prepare(copies[0].companion, teacher)  # type: ignore[arg-type]
    assert [m.version for m, _ in first.versions] == [1] and first.versions[0][0].kind == "FULL"
    pair = companion.prepare(copies[3].companion, teacher)  # type: ignore[arg-type]
    metas = [m for m, _ in pair.versions]
    assert [(m.version, m.kind, m.base_version) for m in metas] == [(2, "DELTA", 1), (3, "FULL", None)]
    assert metas[0].offsets == teacher.offsets
    assert metas[1].offsets == (PartitionRange("in", 0, 20, 19),)  # the whole adds no offsets
    assert metas[0].resume_offsets() == metas[1].resume_offsets() == teacher.resume_offsets()
    assert metas[0].state_dict()["teacher"] == {"model": "t", "version": 12}
    keys = {key for key, _ in pair.messages()}
    assert keys == {student.name.encode()}


def test_distill_settings_are_checked_at_start() -> None:
    with pytest.raises(ValidationError, match="must differ from model"):
        small_settings(model={"name": "m"}, distill={"enabled": True, "model_name": "m"})
    with pytest.raises(ValidationError, match="alpha"):
        small_settings(distill={"enabled": True, "alpha": 1.5})
    with pytest.raises(ValidationError, match="embedding_dim"):
        small_settings(distill={"enabled": True, "embedding_dim": 0})
    assert small_settings(model={"name": "m"}).distill.name_for("m") == "m.student"
