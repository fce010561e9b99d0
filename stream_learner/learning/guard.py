"""The loss-spike guard: which windows are not applied to the model.

A window is refused when its prequential loss is not finite (``non_finite``), or when it is a
*spike* (``loss_spike``): its mean loss is above ``guard.loss_spike_factor`` x the running average of
the accepted windows *and* above that average by more than GUARD_Z standard errors of a mean of its
events (sigma / sqrt(events), sigma the running standard deviation of one event's loss), and the
window holds at least ``guard.min_events`` events. The guard so counts events, as the drift detector
does: a window of a few events says little (one confident miss alone costs several nats, and on a
stationary stream such windows come by the hundred), while a loss five times the average over
thousands of events is a broken input. After ``guard.max_consecutive_skips`` spikes in a row the next
window is accepted and the average starts over: the stream has changed for good.

The average and the variance weigh each accepted window by its events over the events seen, up to
MEMORY (then a window of n events has weight n / (n + MEMORY)). Refused windows are counted by the
caller (`WindowResult.skipped`, the windows_skipped and events_skipped metrics); nothing here drops
events silently.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from stream_learner.config import GuardSettings

#: Why a window was not applied: refused by the guard, or rolled back by the trainer.
SkipReason = Literal["non_finite", "loss_spike"]

#: Accepted windows before the guard has an average to compare with.
WARMUP_WINDOWS = 3
#: A spike must exceed the average by this many standard errors of the window's mean.
GUARD_Z = 5.0
#: Events after which the running average and variance fade.
MEMORY = 100_000


class LossGuard:
    """Decides, window by window, whether a window's prequential loss allows training on it."""

    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.start_over()
        self.spikes = 0  # loss spikes refused in a row

    def start_over(self) -> None:
        self.average, self.variance, self.windows, self.events = math.nan, 0.0, 0, 0

    def check(self, loss: float, events: int, variance: float = 0.0) -> SkipReason | None:
        """Why a window of ``events`` events with mean loss ``loss`` (and ``variance`` of one event's
        loss about it) must not be applied, or None when it may be (and then it is averaged in)."""
        if not math.isfinite(loss):
            return "non_finite"
        if self.is_spike(loss, events):
            if self.spikes < self.settings.max_consecutive_skips:
                self.spikes += 1
                return "loss_spike"
            self.start_over()  # a lasting change
        self.spikes = 0
        self._accept(loss, events, variance)
        return None

    def is_spike(self, loss: float, events: int) -> bool:
        """Whether the loss of a window of ``events`` events is a spike (without changing anything)."""
        if self.windows < WARMUP_WINDOWS or events < self.settings.min_events:
            return False
        excess = loss - self.average
        standard_error = math.sqrt(self.variance / events)
        return loss > self.settings.loss_spike_factor * self.average and excess > GUARD_Z * standard_error

    def _accept(self, loss: float, events: int, variance: float) -> None:
        if self.windows == 0:
            self.average, self.variance = loss, variance
        else:
            weight = events / (min(self.events, MEMORY) + events)
            second = variance + (loss - self.average) ** 2
            self.average += weight * (loss - self.average)
            self.variance += weight * (second - self.variance)
        self.windows += 1
        self.events += events

    def state(self) -> dict[str, Any]:
        return {
            "loss_avg": None if math.isnan(self.average) else self.average,
            "variance": self.variance,
            "windows": self.windows,
            "events": self.events,
            "spikes": self.spikes,
        }

    def restore(self, state: dict[str, Any]) -> None:
        avg = state.get("loss_avg")
        self.average = math.nan if avg is None else float(avg)
        self.variance = float(state.get("variance", 0.0))
        self.windows = int(state.get("windows", 0))
        self.events = int(state.get("events", 0))
        self.spikes = int(state.get("spikes", 0))
