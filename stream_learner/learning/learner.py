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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import Window
from stream_learner.learning.features import OOV_ROW, DynamicField, FeatureMapper, Placement, TableStats
from stream_learner.learning.models import ModelSpec, build_model
from stream_learner.learning.models.optim import restore_rows, scale_second_moments
from stream_learner.learning.rates import LRUpdate, make_controller
from stream_learner.learning.trainer import Evaluation, StepResult, Trainer

#: Accepted windows before the loss-spike guard has an average to compare with.
GUARD_WARMUP = 3
GUARD_DECAY = 0.9
#: Per-id drift test: a row is reset only when its mean log loss over the window's events exceeds what
#: the model itself expects by more than this (nats per event), as well as by lr.drift_reset_z.
DRIFT_RESET_MIN_RISE = 0.1
#: ... and only a row with at least this many of the window's events is tested (a single surprising
#: event can make a z-score of 4: the normal approximation needs some events).
DRIFT_RESET_MIN_EVENTS = 10
#: Probabilities are clipped to [P_CLIP, 1 - P_CLIP] in the per-id drift test.
P_CLIP = 1e-6


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
    skipped: str | None = None  # why the window was not applied: non_finite, loss_spike
    holdout: Evaluation | None = None  # the trained model on the held-out newest events
    tables: dict[str, TableStats] | None = None  # dynamic tables: in use now, changes in this window
    drift_resets: dict[str, int] | None = None  # after a drift: rows reset per id field (`_drifted_rows`)


class Learner:
    """Feature mapper, model, trainer and learning-rate controller for one model name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.features = FeatureMapper.from_settings(settings.model)
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
        self._accepted = 0
        self._spikes = 0  # loss spikes skipped in a row
        self._forget = False  # a drift was detected: forget optimiser state before the next trained window
        self._recent_items: dict[str, int] = {}
        self.events_trained = 0  # cumulative over the model's life, carried in snapshots

    def process(self, window: Window) -> WindowResult:
        """Score the window with the current model, then train on it unless the guard objects."""
        events = window.events
        newest = int(events.timestamp_ms.max()) if len(events) else window.end_ms
        common: dict[str, Any] = dict(
            start_ms=window.start_ms, end_ms=window.end_ms, events=len(events), newest_event_ms=newest
        )
        scored_rows = self.features.rows(events)
        evaluation, probs = self.trainer.score(scored_rows, events.label)
        if len(events) == 0:
            return WindowResult(**common, evaluation=evaluation, lr=LRUpdate(self.controller.lr), step=None)
        update = self.controller.update(evaluation.loss)
        self._forget |= update.drift
        skipped = self._guard(evaluation.loss)
        if skipped:
            return WindowResult(**common, evaluation=evaluation, lr=update, step=None, skipped=skipped)
        train, held = self._split(events)
        placement = self.features.place(train)
        undo = self._forget_rows(placement.rows) if self._forget else None
        fresh, resets = placement.fresh, None
        if self._forget and self.settings.lr.drift_reset_z > 0:
            drifted = self._drifted_rows(scored_rows, events.label, probs)
            resets = {self.features.fields[i].name: len(r) for i, r in drifted.items()}
            fresh = dict(fresh)
            for i, r in drifted.items():
                fresh[i] = np.union1d(fresh.get(i, r), r)
        step = self.trainer.train(placement.rows, train.label, update.lr, self._seed(window), fresh=fresh)
        holdout = None
        if undo is not None and not step.applied:  # the window was rolled back: so is the forgetting
            undo()
        if step.applied:
            self._forget = False
            self.features.commit(placement)
            for field, plan in placement.plans.items():  # expired slots changed outside the trained rows
                self.trainer.mark_touched(field, plan.expired)
            self.events_trained += len(train)
            self._remember_items(train.item_ids, train.timestamp_ms)
            if len(held):
                holdout = self.trainer.evaluate(self.features.rows(held), held.label)
        return WindowResult(
            **common,
            evaluation=evaluation,
            lr=update,
            step=step,
            skipped=None if step.applied else step.reason,
            holdout=holdout,
            tables=self._table_changes(placement if step.applied else None),
            drift_resets=resets if step.applied else None,
        )

    def _forget_rows(self, rows: np.ndarray) -> Callable[[], None]:
        """After a drift, before its first trained window: scale the table optimiser's second moments
        of the rows this window trains by lr.drift_forget, so that their steps grow at once (rows
        first seen later keep their state). Only rows the window touches, so that a delta snapshot
        carries all of the change. Returns what undoes it."""
        opt, factor = self.trainer.sparse_opt, self.settings.lr.drift_forget
        done = []
        for name, table in self.trainer.tables.items():
            used = np.unique(rows[:, self.trainer.table_field[name]])
            index = torch.from_numpy(used).to(table.weight.device)
            done.append((table.weight, index, scale_second_moments(opt, table.weight, index, factor)))

        def undo() -> None:
            for weight, index, saved in done:
                restore_rows(opt, weight, index, saved)

        return undo

    def _drifted_rows(self, rows: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[int, np.ndarray]:
        """Per-id drift detection: the user and item rows (field index -> rows) whose own prequential
        loss in this window shows that their ids changed, to be reset like rows given to new ids.

        Each event's excess loss over what the model expects, d = loss - H(p) = (p - y) logit(p), has
        mean 0 and variance p (1 - p) logit(p)^2 if the model's p is right. A row is flagged when the
        sum of d over its events is more than lr.drift_reset_z standard deviations above 0 and its
        mean above DRIFT_RESET_MIN_RISE. A changed item also raises the loss of every user who sees
        it (and a changed user that of every item it sees), so the fields are tested in turn, the
        one with the most events per row first, and the events of rows flagged in one field are left
        out when testing the next. Nothing is kept between windows (see lr.py for why)."""
        p = np.clip(probs.astype(np.float64), P_CLIP, 1 - P_CLIP)
        logit = np.log(p) - np.log1p(-p)
        excess = (p - labels.astype(np.float64)) * logit
        var = p * (1 - p) * logit**2
        keep = np.ones(len(p))
        fields = [(i, np.unique(rows[:, i], return_inverse=True)) for i in range(min(2, rows.shape[1]))]
        fields.sort(key=lambda f: len(f[1][0]))  # fewest distinct rows = most events per row first
        out = {}
        for i, (used, inverse) in fields:
            n = np.bincount(inverse, keep, len(used))
            rise = np.bincount(inverse, excess * keep, len(used))
            sd = np.sqrt(np.bincount(inverse, var * keep, len(used)))
            hit = (rise > self.settings.lr.drift_reset_z * sd) & (rise > DRIFT_RESET_MIN_RISE * n)
            hit &= n >= DRIFT_RESET_MIN_EVENTS
            if isinstance(self.features.fields[i], DynamicField):
                hit &= used != OOV_ROW  # the row shared by ids not admitted
            if hit.any():
                out[i] = used[hit]
                keep[hit[inverse]] = 0
        return out

    def _table_changes(self, placement: Placement | None) -> dict[str, TableStats] | None:
        """Per dynamic table: rows in use now, and what this window admitted, expired, left unplaced."""
        out = {}
        for i, field in enumerate(self.features.fields):
            if isinstance(field, DynamicField):
                plan = placement.plans[i] if placement is not None else None
                out[field.name] = TableStats(
                    field.stats.in_use,
                    plan.admitted if plan else 0,
                    len(plan.expired) if plan else 0,
                    plan.unplaced if plan else 0,
                )
        return out or None

    def _split(self, events: EventBatch) -> tuple[EventBatch, EventBatch]:
        """The events to train on and the newest ones held out (events are in time order)."""
        cut = len(events) - int(len(events) * self.settings.train.holdout_fraction)
        return events.take(slice(0, cut)), events.take(slice(cut, None))  # views, not copies

    def _seed(self, window: Window) -> int:
        return (self.settings.train.seed * 1_000_003 + window.start_ms) % (1 << 63)

    def _guard(self, loss: float) -> str | None:
        """Refuse a window whose prequential loss is not finite or spikes against the average."""
        if not math.isfinite(loss):
            return "non_finite"
        g = self.settings.guard
        if self._accepted >= GUARD_WARMUP and loss > g.loss_spike_factor * self._loss_avg:
            if self._spikes < g.max_consecutive_skips:
                self._spikes += 1
                return "loss_spike"
            self._loss_avg, self._accepted = math.nan, 0  # a lasting change: start the average over
        self._spikes = 0
        self._accepted += 1
        avg = self._loss_avg
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
        """Everything but tensors, as JSON-ready values."""
        return {
            "lr": self.controller.state(),
            "guard": {
                "loss_avg": None if math.isnan(self._loss_avg) else self._loss_avg,
                "windows": self._accepted,
                "spikes": self._spikes,
            },
            "forget_pending": self._forget,
            "sparse_optimizer": self.settings.train.sparse_optimizer,
            "tables": {name: vars(stats) for name, stats in self.features.stats().items()},
            "recent_items": self.recent_items(),
            "events_trained": self.events_trained,
        }

    def tensors(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """Weights, optimiser state and ``features.<field>.<name>`` dynamic-table state: CPU copies,
        or with ``copy=False`` the live tensors (valid until the next window is trained)."""
        out = self.trainer.state_tensors(copy)
        out.update({k: torch.from_numpy(v.copy() if copy else v) for k, v in self.features.state().items()})
        return out

    def restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Load what `tensors` and `state` gave. Raises ValueError when names or shapes do not fit;
        optimiser state of another kind of sparse optimiser is dropped (it starts afresh)."""
        self.features.load_state(tensors)
        same_optimizer = state.get("sparse_optimizer", self.settings.train.sparse_optimizer)
        model = {k: v for k, v in tensors.items() if not k.startswith("features.")}
        self.trainer.load_state_tensors(
            model, optimizer=same_optimizer == self.settings.train.sparse_optimizer
        )
        self.controller.restore(state.get("lr", {}))
        guard = state.get("guard", {})
        avg = guard.get("loss_avg")
        self._loss_avg = math.nan if avg is None else float(avg)
        self._accepted = int(guard.get("windows", 0))
        self._spikes = int(guard.get("spikes", 0))
        self._forget = bool(state.get("forget_pending", False))
        current = self.features.stats()
        for name, counts in state.get("tables", {}).items():
            stats = current.get(name)
            if stats is not None:
                stats.admitted, stats.expired, stats.unplaced = (
                    int(counts.get(k, 0)) for k in ("admitted", "expired", "unplaced")
                )
        self.events_trained = int(state.get("events_trained", 0))
        items = state.get("recent_items", [])
        self._recent_items = {item: -i for i, item in enumerate(items)}
