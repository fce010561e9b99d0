"""The learning step of one window: features, prequential score, learning rate, guard, training.

`Learner.process` is what the training worker runs for every closed window. It knows windows and
settings; the torch work is the trainer's, the rate is the controller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stream_learner.config import Settings
from stream_learner.features import FeatureMapper
from stream_learner.lr import LRUpdate, make_controller
from stream_learner.models import ModelSpec, build_model
from stream_learner.trainer import Evaluation, StepResult, Trainer
from stream_learner.windowing import Window

#: Windows before the loss-spike guard has an average to compare with.
GUARD_WARMUP = 3
GUARD_DECAY = 0.9


@dataclass(frozen=True)
class WindowResult:
    """The outcome of one window, as the app reports and commits it."""

    start_ms: int
    end_ms: int
    events: int
    newest_event_ms: int
    evaluation: Evaluation
    lr: LRUpdate
    step: StepResult | None  # None when the window was skipped before training
    skipped: str | None = None


class Learner:
    """Model, trainer and learning-rate controller for one model name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.features = FeatureMapper(settings.model)
        m = settings.model
        self.spec = ModelSpec(
            kind=m.kind,
            fields=self.features.specs(),
            embedding_dim=m.embedding_dim,
            hidden=tuple(m.hidden),
            dropout=m.dropout,
        )
        torch.manual_seed(settings.train.seed)
        self.model = build_model(self.spec)
        self.controller = make_controller(settings.lr)
        self.trainer = Trainer(self.model, settings.train, self.controller.lr)
        self._loss_avg = math.nan
        self._windows = 0
        self._recent_items: dict[str, int] = {}
        self.events_trained = 0  # cumulative over the model's life, carried in snapshots

    def process(self, window: Window) -> WindowResult:
        """Score the window with the current model, then train on it unless the guard objects."""
        events = window.events
        rows = self.features.rows(events)
        evaluation = self.trainer.evaluate(rows, events.label)
        update = self.controller.update(evaluation.loss)
        newest = int(events.timestamp_ms.max()) if len(events) else window.end_ms
        common = dict(
            start_ms=window.start_ms, end_ms=window.end_ms, events=len(events), newest_event_ms=newest
        )
        skipped = self._guard(evaluation.loss)
        if skipped:
            return WindowResult(**common, evaluation=evaluation, lr=update, step=None, skipped=skipped)
        step = self.trainer.train(rows, events.label, update.lr, self._seed(window))
        if step.applied:
            self.events_trained += len(events)
            self._remember_items(events.item_ids, events.timestamp_ms)
        return WindowResult(
            **common,
            evaluation=evaluation,
            lr=update,
            step=step,
            skipped=None if step.applied else step.reason,
        )

    def _seed(self, window: Window) -> int:
        return (self.settings.train.seed * 1_000_003 + window.start_ms) % (1 << 63)

    def _guard(self, loss: float) -> str | None:
        """Refuse a window whose prequential loss is not finite or spikes against the average."""
        if not math.isfinite(loss):
            return "non_finite"
        self._windows += 1
        avg = self._loss_avg
        if self._windows > GUARD_WARMUP and loss > self.settings.guard.loss_spike_factor * avg:
            return "loss_spike"
        self._loss_avg = loss if math.isnan(avg) else GUARD_DECAY * avg + (1 - GUARD_DECAY) * loss
        return None

    def _remember_items(self, item_ids: np.ndarray, times: np.ndarray) -> None:
        limit = self.settings.snapshot.recent_items
        if limit == 0:
            return
        self._recent_items.update(zip(item_ids.tolist(), times.tolist(), strict=True))
        if len(self._recent_items) > 4 * limit:
            newest = sorted(self._recent_items.items(), key=lambda kv: kv[1])[-limit:]
            self._recent_items = dict(newest)

    def recent_items(self) -> list[str]:
        """Most recently active item ids, newest first."""
        ranked = sorted(self._recent_items.items(), key=lambda kv: kv[1], reverse=True)
        return [item for item, _ in ranked[: self.settings.snapshot.recent_items]]

    # -- state for snapshots -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "lr": self.controller.state(),
            "guard": {
                "loss_avg": None if math.isnan(self._loss_avg) else self._loss_avg,
                "windows": self._windows,
            },
            "recent_items": self.recent_items(),
            "events_trained": self.events_trained,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.trainer.state_tensors()

    def restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.trainer.load_state_tensors(tensors)
        self.controller.restore(state.get("lr", {}))
        guard = state.get("guard", {})
        avg = guard.get("loss_avg")
        self._loss_avg = math.nan if avg is None else float(avg)
        self._windows = int(guard.get("windows", 0))
        self.events_trained = int(state.get("events_trained", 0))
        items = state.get("recent_items", [])
        self._recent_items = {item: -i for i, item in enumerate(items)}
