"""A student model trained beside the model (its teacher), window by window, on the teacher's outputs.

With ``[distill]`` enabled the training thread, right after the teacher's `Learner.process`, hands
the window to `Student.learn`:

1. the student scores the window as it stands (prequential, on the rows and real-time inputs the
   teacher scored it with: `Lesson`), which goes to its own metrics;
2. when the teacher trained on the window, the student trains on the same events, with the same
   rows and inputs, the same rows reset for new ids and the teacher's learning rate, towards
   ``alpha`` x the teacher's prequential probability + (1 - alpha) x the true label (`mix`).

Binary cross-entropy is linear in its target, so training towards the mixed target is training on
alpha x the loss against the teacher's soft labels + (1 - alpha) x the loss against the true labels,
with one forward and backward pass. The teacher's probabilities are those it scored the window with
before training on it (`WindowResult.probabilities`), computed anyway: nothing is scored twice.

The student has the teacher's fields and tables (rows and their mapping) and reads the teacher's
feature state, never one of its own: its snapshots carry the teacher's ``features.*`` arrays, so that
a subscriber computes the same inputs for it. It differs in its kind, embedding width and MLP. The
teacher is unchanged by it: the student only reads what the teacher computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stream_learner.config import Settings
from stream_learner.learning.learner import Learner, Lesson, WindowResult
from stream_learner.learning.models import ModelSpec, build_model
from stream_learner.learning.trainer import Evaluation, StepResult, Trainer

#: Told the student's prequential evaluation of every window it scored.
OnEvaluated = Callable[[Evaluation], None]


def mix(labels: np.ndarray, teacher: np.ndarray, alpha: float) -> np.ndarray:
    """The student's targets: ``alpha`` x the teacher's probabilities + (1 - alpha) x the labels."""
    if len(labels) != len(teacher):
        raise ValueError(f"{len(labels)} labels for {len(teacher)} teacher probabilities")
    out = alpha * np.asarray(teacher, np.float64) + (1.0 - alpha) * np.asarray(labels, np.float64)
    return out.astype(np.float32)


def student_spec(settings: Settings, teacher: ModelSpec) -> ModelSpec:
    """The student's spec: the teacher's fields and inputs, ``[distill]``'s kind, width and MLP."""
    d = settings.distill
    return ModelSpec(
        kind=d.kind or teacher.kind,
        fields=teacher.fields,
        embedding_dim=d.embedding_dim,
        hidden=tuple(d.hidden) if d.hidden is not None else teacher.hidden,
        dropout=teacher.dropout,
        extra=teacher.extra,
    )


@dataclass(frozen=True)
class Taught:
    """What `Student.learn` did with a window: its prequential evaluation and probabilities, and its
    training step (None when the teacher did not train on the window)."""

    evaluation: Evaluation
    probabilities: np.ndarray
    step: StepResult | None


class Student:
    """The student's model and trainer; the teacher's feature mapper, read-only."""

    def __init__(self, settings: Settings, teacher: Learner, on_evaluated: OnEvaluated | None = None) -> None:
        self.settings = settings
        self.name = settings.distill.name_for(settings.model.name)
        self.alpha = settings.distill.alpha
        self.teacher = teacher
        self.spec = student_spec(settings, teacher.spec)
        self.trainer = Trainer(build_model(self.spec), settings.train, teacher.controller.lr)
        self.model = self.trainer.model
        realtime = teacher.features.realtime
        if realtime is not None and self.model.count_head is not None:
            with torch.no_grad():  # as the teacher starts: from the mean of the rate logits
                weights = torch.from_numpy(realtime.initial_weights())
                self.model.count_head.weight.copy_(weights.reshape(1, -1))
        self.on_evaluated = on_evaluated or (lambda evaluation: None)
        self.events_trained = 0
        self.last: Evaluation | None = None  # the last window's prequential evaluation

    def learn(self, result: WindowResult) -> Taught | None:
        """Score and train on the window the teacher just processed (`Learner.lesson`); None for an
        empty window. Rows whose feature state the window changed are marked for the next delta
        whether or not anything was trained (the student's snapshots carry the teacher's features)."""
        lesson = self.teacher.lesson
        if lesson is None or result.probabilities is None:
            return None
        for field, rows in lesson.changed:
            self.trainer.mark_touched(field, rows)
        if result.evaluation.count == 0:
            return None
        evaluation, probs = self.trainer.score(lesson.scored_rows, lesson.labels, lesson.scored_inputs)
        self.last = evaluation
        self.on_evaluated(evaluation)
        step = None
        if lesson.trained_rows is not None:
            step = self._train(lesson, result)
        return Taught(evaluation, probs, step)

    def _train(self, lesson: Lesson, result: WindowResult) -> StepResult:
        assert lesson.trained_rows is not None and result.probabilities is not None
        n = len(lesson.trained_rows)
        targets = mix(lesson.labels[:n], result.probabilities[:n], self.alpha)
        seed = (self.settings.train.seed * 1_000_003 + result.start_ms + 1) % (1 << 63)
        step = self.trainer.train(
            lesson.trained_rows, targets, result.lr.lr, seed, fresh=lesson.fresh, inputs=lesson.trained_inputs
        )
        if step.applied:
            self.events_trained += n
        return step

    # -- state for snapshots (the interface `stream_learner.snapshots.state.StateCopier` copies) ----
    def state(self) -> dict[str, Any]:
        """Everything but tensors: the teacher's recently active items (for recommendations), its
        version of the student, the last window's prequential quality."""
        last = self.last
        return {
            "sparse_optimizer": self.settings.train.sparse_optimizer,
            "recent_items": self.teacher.recent.state(),
            "events_trained": self.events_trained,
            "teacher": self.settings.model.name,
            "alpha": self.alpha,
            "validation": {} if last is None else {"loss": last.loss, "auc": last.auc, "events": last.count},
        }

    def tensors(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """The student's weights and optimiser state, and the teacher's feature state (as
        `Learner.tensors`)."""
        out = self.trainer.state_tensors(copy)
        features = self.teacher.features.state()
        out.update({k: torch.from_numpy(v.copy() if copy else v) for k, v in features.items()})
        return out

    def restore(self, tensors: Mapping[str, np.ndarray | torch.Tensor], state: dict[str, Any]) -> None:
        """Load the student's own tensors and state from its snapshot (its ``features.*`` are the
        teacher's, restored with the teacher). Raises ValueError when they do not fit."""
        same_optimizer = state.get("sparse_optimizer", self.settings.train.sparse_optimizer)
        model = {k: torch.as_tensor(v) for k, v in tensors.items() if not k.startswith("features.")}
        self.trainer.load_state_tensors(
            model, optimizer=same_optimizer == self.settings.train.sparse_optimizer
        )
        self.events_trained = int(state.get("events_trained", 0))
