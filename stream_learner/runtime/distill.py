"""The student beside the model (``[distill]``): built, restored and wired for the training thread
and the publisher once the model is restored (`stream_learner.learning.student`,
`stream_learner.snapshots.companion`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.learning.learner import Learner
from stream_learner.learning.student import Student
from stream_learner.learning.trainer import Evaluation
from stream_learner.metrics import Metrics
from stream_learner.snapshots.companion import Companion, restore_companion
from stream_learner.snapshots.format import Chunk, Sign, SnapshotMeta
from stream_learner.snapshots.state import StateCopier


@dataclass(frozen=True)
class StudentParts:
    """The student, its state copier (for the worker) and its snapshot history (for the publisher)."""

    student: Student
    copier: StateCopier
    companion: Companion


def start_student(
    settings: Settings,
    teacher: Learner,
    restored: SnapshotMeta | None,
    metrics: Metrics,
    sign: Sign | None = None,
    verifier: Callable[[Chunk], None] | None = None,
    on_refused: Callable[[SnapshotError], None] | None = None,
) -> StudentParts | None:
    """The student of ``teacher`` (restored at the teacher's offsets, else fresh), or None when
    ``distill.enabled`` is off."""
    s = settings
    if not s.distill.enabled:
        return None
    name = s.distill.name_for(s.model.name)
    loss, auc = metrics.student_validation_loss.labels(name), metrics.student_validation_auc.labels(name)

    def evaluated(evaluation: Evaluation) -> None:
        loss.set(evaluation.loss)
        auc.set(evaluation.auc)

    student = Student(s, teacher, evaluated)
    spec_json = student.spec.to_json()
    start = restore_companion(s, student, restored, verifier, on_refused)
    copier = StateCopier(
        student,
        s.snapshot.full_every,
        start.since_full,
        dict(start.layout),
        delta_first=s.snapshot.full_every > 1,
    )
    companion = Companion(
        name=name,
        spec_json=spec_json,
        max_message_bytes=s.snapshot.max_message_bytes,
        sign=sign,
        version=start.version,
        form_topic=s.serving.form_topic_for(s.snapshot.topic) if s.serving.publish_form else None,
        precision=s.serving.precision,
    )
    return StudentParts(student, copier, companion)
