"""The loss-spike guard: a window the model should not learn from is refused before training.

A window whose prequential loss is not finite, or above ``guard.loss_spike_factor`` x the running
average of accepted windows, is not applied. After ``guard.max_consecutive_skips`` such windows in a
row the next one is accepted and the average starts over: the stream has changed for good.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from stream_learner.config import GuardSettings

#: Why a window was not applied: refused by the guard, or rolled back by the trainer.
SkipReason = Literal["non_finite", "loss_spike"]

#: Accepted windows before the guard has an average to compare with.
WARMUP = 3
#: Weight of the average's past in each update (an exponential moving average).
DECAY = 0.9


class LossGuard:
    """Refuses windows whose loss is not finite or spikes against the recent average."""

    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.loss_avg = math.nan
        self.accepted = 0
        self.spikes = 0  # loss spikes refused in a row

    def check(self, loss: float) -> SkipReason | None:
        """Why a window with this prequential loss must not be trained on; None when it may."""
        if not math.isfinite(loss):
            return "non_finite"
        g = self.settings
        if self.accepted >= WARMUP and loss > g.loss_spike_factor * self.loss_avg:
            if self.spikes < g.max_consecutive_skips:
                self.spikes += 1
                return "loss_spike"
            self.loss_avg, self.accepted = math.nan, 0  # a lasting change: start the average over
        self.spikes = 0
        self.accepted += 1
        avg = self.loss_avg
        self.loss_avg = loss if math.isnan(avg) else DECAY * avg + (1 - DECAY) * loss
        return None

    def state(self) -> dict[str, Any]:
        return {
            "loss_avg": None if math.isnan(self.loss_avg) else self.loss_avg,
            "windows": self.accepted,
            "spikes": self.spikes,
        }

    def restore(self, state: dict[str, Any]) -> None:
        avg = state.get("loss_avg")
        self.loss_avg = math.nan if avg is None else float(avg)
        self.accepted = int(state.get("windows", 0))
        self.spikes = int(state.get("spikes", 0))
