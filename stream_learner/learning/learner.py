"""The learning step of one window: features, prequential score, learning rate, guard, training.

`Learner.process` is what the training worker runs for every closed window:

1. score the window with the model as it stands (prequential validation: log loss, AUC, count);
2. let the learning-rate controller read that loss;
3. guard: a window whose loss is not finite, or above ``guard.loss_spike_factor`` x the running
   average of accepted windows, is not applied (after ``guard.max_consecutive_skips`` such windows in
   a row the next one is accepted and the average starts over: the stream has changed for good);
4. train on it (all of it, or the older part when ``train.holdout_fraction`` holds the newest events
   out, which are then scored after training as time-ordered validation); the trainer rolls the
   window back if a loss or gradient is not finite. The first window trained after a detected
   drift first forgets the optimiser state of the rows it trains (lr.drift_forget) and resets the
   user and item rows whose own loss in it rose significantly (lr.drift_reset_z, `_drifted_rows`).

It knows windows and settings; the torch work is the trainer's, the ids the feature mapper's, the
rate the controller's. An empty window changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from stream_learner.config import Settings, TrainSettings
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import Window
from stream_learner.learning.drift_reaction import DriftReaction
from stream_learner.learning.features import DynamicField, FeatureMapper, Placement, TableStats
from stream_learner.learning.guard import LossGuard, SkipReason
from stream_learner.learning.models import ModelSpec, build_model
from stream_learner.learning.pruning import Worth
from stream_learner.learning.rates import LRUpdate, make_controller
from stream_learner.learning.realtime import Prepared
from stream_learner.learning.recent import RecentItems
from stream_learner.learning.trainer import Evaluation, StepResult, Trainer

#: Builds the trainer (and its model) of a model spec: `local_trainer`, or one rank's of a job.
TrainerFactory = Callable[[ModelSpec, TrainSettings, float], Trainer]


def local_trainer(spec: ModelSpec, settings: TrainSettings, lr: float) -> Trainer:
    """The trainer of a model that this process holds whole."""
    return Trainer(build_model(spec), settings, lr)


@dataclass(frozen=True)
class WindowResult:
    """The outcome of one window, as the app reports and commits it."""

    start_ms: int
    end_ms: int
    events: int
    newest_event_ms: int
    evaluation: Evaluation  # prequential: the model before this window, on all of it
    lr: LRUpdate
    step: StepResult | None  # None when the window was not trained on (skipped or empty)
    skipped: SkipReason | None = None  # why the window was not applied
    holdout: Evaluation | None = None  # the trained model on the held-out newest events
    tables: dict[str, TableStats] | None = None  # dynamic tables: in use now, changes in this window
    drift_resets: dict[str, int] | None = None  # after a drift: rows reset per id field
    probabilities: np.ndarray | None = None  # prequential: the model before this window, per event


@dataclass(frozen=True)
class Lesson:
    """A window as the model saw it, for a student trained beside it (`stream_learner.learning.student`):
    the rows and real-time inputs its events were scored with and their labels; when the model trained
    on it, the rows and inputs of the events trained (the first ``len(trained_rows)``) and the rows
    given to new ids; and the rows whose feature state changed (field index, rows), for deltas."""

    scored_rows: np.ndarray
    scored_inputs: np.ndarray | None
    labels: np.ndarray
    changed: list[tuple[int, np.ndarray]]
    trained_rows: np.ndarray | None = None  # None: the window was not trained on
    trained_inputs: np.ndarray | None = None
    fresh: dict[int, np.ndarray] | None = None


class Learner:
    """Feature mapper, model, trainer and learning-rate controller for one model name."""

    def __init__(self, settings: Settings, make_trainer: TrainerFactory = local_trainer) -> None:
        self.settings = settings
        self.features = FeatureMapper.from_settings(settings.model, settings.features)
        m = settings.model
        self.spec = ModelSpec(
            kind=m.kind,
            fields=self.features.specs(),
            embedding_dim=m.embedding_dim,
            hidden=tuple(m.hidden),
            dropout=m.dropout,
            extra=self.features.spec_extra(),
        )
        torch.manual_seed(settings.train.seed)
        self.controller = make_controller(settings.lr)
        self.trainer = make_trainer(self.spec, settings.train, self.controller.lr)
        self.model = self.trainer.model
        if self.features.realtime is not None and self.model.count_head is not None:
            with torch.no_grad():  # a new model starts from the mean of the rate logits
                weights = torch.from_numpy(self.features.realtime.initial_weights())
                self.model.count_head.weight.copy_(weights.reshape(1, -1))
        self.guard = LossGuard(settings.guard)
        self.drift = DriftReaction(settings.lr)
        self.worth = Worth(m.prune_by, self.features.realtime, self.trainer.tables, self.trainer.table_field)
        self.recent = RecentItems(settings.snapshot.recent_items)
        self.events_trained = 0  # cumulative over the model's life, carried in snapshots
        self.lesson: Lesson | None = None  # the last window processed, for a student

    def process(self, window: Window) -> WindowResult:
        """Score the window with the current model, then train on it unless the guard objects; fold
        its events into the real-time features either way (they describe the stream, not the model)."""
        events = window.events
        newest = int(events.timestamp_ms.max()) if len(events) else window.end_ms
        scored_rows = self.features.rows(events)
        cut = self._cut(len(events))
        train = events.take(slice(0, cut))  # a view, not a copy
        placement = self.features.place(train, self.worth.provider())
        # The real-time inputs follow the rows the window is trained with: an id new to a dynamic
        # table counts in its own (fresh) row from its first event, as in a hashed table, not in row 0.
        placed = self._prepare(np.concatenate((placement.rows, scored_rows[cut:])), window, placement.fresh)
        lesson = self.lesson = Lesson(scored_rows, self._inputs(placed), events.label, [])
        evaluation, probs = self.trainer.score(scored_rows, events.label, lesson.scored_inputs)
        common: dict[str, Any] = dict(
            start_ms=window.start_ms,
            end_ms=window.end_ms,
            events=len(events),
            newest_event_ms=newest,
            probabilities=probs,
        )
        if evaluation.count == 0:  # (of the whole window when the trainer is one rank's of a job)
            return WindowResult(**common, evaluation=evaluation, lr=LRUpdate(self.controller.lr), step=None)
        update = self.controller.update(evaluation.loss, evaluation.count, evaluation.variance)
        if update.drift:
            self.drift.arm()
        skipped = self.guard.check(evaluation.loss, evaluation.count, evaluation.variance)
        if skipped:
            self._fold(self._unplaced(scored_rows, window, placement, placed), None)
            return WindowResult(**common, evaluation=evaluation, lr=update, step=None, skipped=skipped)
        fresh, resets, undo = placement.fresh, None, None
        if self.drift.pending:
            undo = self.drift.forget(self.trainer, placement.rows)
            drifted = self.drift.drifted_rows(self.features, scored_rows, events.label, probs)
            resets = {self.features.fields[i].name: len(r) for i, r in drifted.items()}
            fresh = dict(fresh)
            for i, r in drifted.items():
                fresh[i] = np.union1d(fresh.get(i, r), r)
        inputs = self._inputs(placed)
        step = self.trainer.train(
            placement.rows,
            train.label,
            update.lr,
            self._seed(window),
            fresh=fresh,
            inputs=None if inputs is None else inputs[:cut],
        )
        holdout = None
        if undo is not None and not step.applied:  # the window was rolled back: so is the forgetting
            undo()
        if step.applied:
            self.drift.done()
            self.features.commit(placement)
            for field, plan in placement.plans.items():  # expired slots changed outside the trained rows
                self._mark(field, plan.expired)
            self.events_trained += len(train)
            self.recent.add(train.item_ids, train.timestamp_ms)
            holdout = self._holdout(scored_rows[cut:], events.take(slice(cut, None)), inputs, cut)
            trained = None if inputs is None else inputs[:cut]
            self.lesson = replace(
                lesson, trained_rows=placement.rows, trained_inputs=trained, fresh=placement.fresh
            )
        if step.applied:
            self._fold(placed, placement.fresh)
        else:
            self._fold(self._unplaced(scored_rows, window, placement, placed), None)
        return WindowResult(
            **common,
            evaluation=evaluation,
            lr=update,
            step=step,
            skipped=None if step.applied else step.reason,
            holdout=holdout,
            tables=self._table_changes(placement if step.applied else None),
            drift_resets=resets if step.applied and resets else None,
        )

    def _prepare(
        self, rows: np.ndarray, window: Window, fresh: dict[int, np.ndarray] | None = None
    ) -> Prepared | None:
        """The real-time inputs of the window's events as of each one (None without them): of every
        rank's events in a job (`Trainer.whole_stream`), each rank taking its own; and the state as of
        the window's end (an event-time window's; a count window's newest event, since a later window
        may hold events of that time)."""
        realtime = self.features.realtime
        if realtime is None:
            return None
        whole = self.trainer.whole_stream(self.features.stream(rows, window.events))
        if self.settings.window.kind == "event_time" or not len(whole):
            until = window.end_ms
        else:
            until = int(whole.time_ms.max())
        return realtime.window(whole, until, fresh)

    def _unplaced(
        self, rows: np.ndarray, window: Window, placement: Placement, placed: Prepared | None
    ) -> Prepared | None:
        """The real-time state of a window not applied, with its ``rows`` as the tables stand (its
        placement dropped: new ids count in row 0); ``placed`` when the placement changed no row."""
        if not placement.fresh and np.array_equal(placement.rows, rows[: len(placement.rows)]):
            return placed
        return self._prepare(rows, window)

    def _inputs(self, prepared: Prepared | None) -> np.ndarray | None:
        """This process's (or rank's) events' inputs."""
        return None if prepared is None else self.trainer.own(prepared.inputs)

    def _fold(self, prepared: Prepared | None, fresh: dict[int, np.ndarray] | None) -> None:
        """Keep the state as of a handled window's end (forgetting the ``fresh`` rows first), and
        mark the rows it changed for the next delta."""
        realtime = self.features.realtime
        if realtime is None or prepared is None:
            return
        if fresh:
            realtime.reset(fresh)
        for field, rows in realtime.fold(prepared).items():
            self._mark(field, rows)

    def _mark(self, field: int, rows: np.ndarray) -> None:
        """Count rows of a field as changed for the next delta (the student's too: `Lesson.changed`)."""
        self.trainer.mark_touched(field, rows)
        if self.lesson is not None:
            self.lesson.changed.append((field, rows))

    def _holdout(
        self, rows: np.ndarray, held: EventBatch, inputs: np.ndarray | None, cut: int
    ) -> Evaluation | None:
        """The trained model on the held-out events (the window's, over every rank of a job)."""
        if self.settings.train.holdout_fraction == 0:
            return None
        evaluation = self.trainer.evaluate(rows, held.label, None if inputs is None else inputs[cut:])
        return evaluation if evaluation.count else None

    def _table_changes(self, placement: Placement | None) -> dict[str, TableStats] | None:
        """Per dynamic table: rows in use now, and what this window admitted, expired, left unplaced,
        pruned."""
        out = {}
        for i, field in enumerate(self.features.fields):
            if isinstance(field, DynamicField):
                plan = placement.plans[i] if placement is not None else None
                out[field.name] = TableStats(
                    field.stats.in_use,
                    plan.admitted if plan else 0,
                    len(plan.expired) if plan else 0,
                    plan.unplaced if plan else 0,
                    len(plan.pruned) if plan else 0,
                )
        return out or None

    def _cut(self, events: int) -> int:
        """How many of a window's events are trained: all but the newest held out (events are in
        time order)."""
        return events - int(events * self.settings.train.holdout_fraction)

    def _seed(self, window: Window) -> int:
        return (self.settings.train.seed * 1_000_003 + window.start_ms) % (1 << 63)

    def recent_items(self) -> list[str]:
        """Most recently active item ids, newest first."""
        return self.recent.newest()

    # -- state for snapshots -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything but tensors, as JSON-ready values."""
        return {
            "lr": self.controller.state(),
            "guard": self.guard.state(),
            **self.drift.state(),
            "sparse_optimizer": self.settings.train.sparse_optimizer,
            "tables": {name: vars(stats) for name, stats in self.features.stats().items()},
            "recent_items": self.recent.state(),
            "events_trained": self.events_trained,
        }

    def tensors(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """Weights, optimiser state and ``features.<field>.<name>`` dynamic-table state: CPU copies,
        or with ``copy=False`` the live tensors (valid until the next window is trained)."""
        out = self.trainer.state_tensors(copy)
        out.update({k: torch.from_numpy(v.copy() if copy else v) for k, v in self.features.state().items()})
        return out

    def restore(self, tensors: Mapping[str, np.ndarray | torch.Tensor], state: dict[str, Any]) -> None:
        """Load what `tensors` (or a snapshot's arrays: numpy, taken without a copy where the model
        keeps them) and `state` gave. Raises ValueError when names or shapes do not fit; optimiser
        state of another kind of sparse optimiser is dropped (it starts afresh)."""
        self.features.load_state(tensors)
        same_optimizer = state.get("sparse_optimizer", self.settings.train.sparse_optimizer)
        model = {k: torch.as_tensor(v) for k, v in tensors.items() if not k.startswith("features.")}
        self.trainer.load_state_tensors(
            model, optimizer=same_optimizer == self.settings.train.sparse_optimizer
        )
        self.controller.restore(state.get("lr", {}))
        self.guard.restore(state.get("guard", {}))
        self.drift.restore(state)
        current = self.features.stats()
        for name, counts in state.get("tables", {}).items():
            stats = current.get(name)
            if stats is not None:
                stats.admitted, stats.expired, stats.unplaced, stats.pruned = (
                    int(counts.get(k, 0)) for k in ("admitted", "expired", "unplaced", "pruned")
                )
        self.events_trained = int(state.get("events_trained", 0))
        self.recent.restore(list(state.get("recent_items", [])))
