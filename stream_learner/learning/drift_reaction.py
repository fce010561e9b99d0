"""What the learner does after the change detector fires, in the first window it trains on next.

1. Forgetting: the table optimiser's second moments of the rows the window trains are scaled by
   lr.drift_forget, so that their steps grow at once (rows first seen later keep their state). Only
   rows the window touches, so that a delta snapshot carries all of the change.
2. Per-id reset (lr.drift_reset_z > 0): the user and item rows whose own prequential loss in that
   window shows that their ids changed are reset, like rows given to new ids.

The reaction is *pending* from the detection until a window is trained; that flag is its state.
See docs/decisions/drift-reaction.md for the measurements behind both parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stream_learner.config import LRSettings
from stream_learner.learning.features import OOV_ROW, DynamicField, FeatureMapper
from stream_learner.learning.trainer import Trainer

#: A row is reset only when its mean log loss over the window's events exceeds what the model itself
#: expects by more than this (nats per event), as well as by lr.drift_reset_z standard deviations.
MIN_RISE = 0.1
#: ... and only a row with at least this many of the window's events is tested (a single surprising
#: event can make a z-score of 4: the normal approximation needs some events).
MIN_EVENTS = 10
#: Probabilities are clipped to [P_CLIP, 1 - P_CLIP] in the per-id test.
P_CLIP = 1e-6


class DriftReaction:
    """Forgetting and per-id reset, armed by a detected drift and applied by the next trained window."""

    def __init__(self, settings: LRSettings) -> None:
        self.settings = settings
        self.pending = False

    def arm(self) -> None:
        """A drift was detected: react in the next window that is trained."""
        self.pending = True

    def done(self) -> None:
        """A window was trained with the reaction applied."""
        self.pending = False

    def forget(self, trainer: Trainer, rows: np.ndarray) -> Callable[[], None]:
        """Scale the table optimiser's second moments of the ``rows`` (n, fields) a window trains by
        lr.drift_forget; return what undoes it (for a window that is rolled back)."""
        return trainer.forget(rows, self.settings.drift_forget)

    def drifted_rows(
        self, features: FeatureMapper, rows: np.ndarray, labels: np.ndarray, probs: np.ndarray
    ) -> dict[int, np.ndarray]:
        """The user and item rows (field index -> rows) whose own prequential loss in this window
        shows that their ids changed, to be reset like rows given to new ids.

        Each event's excess loss over what the model expects, d = loss - H(p) = (p - y) logit(p), has
        mean 0 and variance p (1 - p) logit(p)^2 if the model's p is right. A row is flagged when the
        sum of d over its events is more than lr.drift_reset_z standard deviations above 0 and its
        mean above `MIN_RISE`. A changed item also raises the loss of every user who sees it (and a
        changed user that of every item it sees), so the fields are tested in turn, the one with the
        most events per row first, and the events of rows flagged in one field are left out when
        testing the next. Nothing is kept between windows."""
        if self.settings.drift_reset_z <= 0:
            return {}
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
            hit = (rise > self.settings.drift_reset_z * sd) & (rise > MIN_RISE * n)
            hit &= n >= MIN_EVENTS
            if isinstance(features.fields[i], DynamicField):
                hit &= used != OOV_ROW  # the row shared by ids not admitted
            if hit.any():
                out[i] = used[hit]
                keep[hit[inverse]] = 0
        return out

    def state(self) -> dict[str, Any]:
        return {"forget_pending": self.pending}

    def restore(self, state: dict[str, Any]) -> None:
        self.pending = bool(state.get("forget_pending", False))
