"""Page-Hinkley test for an increase of the mean loss per event, weighing windows by their events.

Page-Hinkley counts events, not windows (docs/decisions/count-aware-drift-detector.md): windows hold
from one event to millions, and the mean loss of a 13-event window is a hundred times noisier than a
100 000-event one's (its standard error is sigma / sqrt(events), sigma about 0.5 nats for log loss).
Each window adds the Gaussian log-likelihood ratio of "the mean loss rose by 2 delta m" against "it
did not" over its events, events * (2 delta m / v) * (loss - m - delta m), with m the running mean
loss and v the running variance of one event's loss about it (both weighted by events, with a memory
of MEAN_MEMORY events; v is the window's own when that is larger); it fires when that sum has risen
more than lr.ph_threshold above its minimum. The first WARMUP_EVENTS events only set m and v. delta
(lr.ph_delta) is relative to the mean loss, so one setting fits streams whose loss is 0.1 or 0.7. A
few large windows of a raised loss fire it; a single small window, however bad, cannot: it holds too
few events to be evidence.
"""

from __future__ import annotations

import math
from typing import Any

#: The running mean and variance weigh a window by its events over the events seen, up to this many
#: (then they fade: a window of n events has weight n / (n + MEAN_MEMORY)).
MEAN_MEMORY = 100_000
#: Only the level and the noise of the loss are learnt over this many first events (the first windows
#: of a fresh model swing as it learns; its variance needs some events).
WARMUP_EVENTS = 1_000


class PageHinkley:
    """Page-Hinkley test for an increase of the mean loss per event (see the module docstring): each
    window adds events * (2 delta m / v) * (loss - m - delta m); an alarm when the sum has risen more
    than ``threshold`` above its minimum. m and v are the running mean of the loss and of its squared
    deviation per event (``variance``: the window's own variance of one event's loss about the
    window's mean; None when the window's mean is a single observation, as when the values are not
    event means). Both are weighted by events and fade after MEAN_MEMORY events, so a loss that has
    fallen while the model learnt is compared with its recent level, not with its history."""

    def __init__(self, delta: float, threshold: float, memory: int = MEAN_MEMORY) -> None:
        self.delta, self.threshold, self.memory = delta, threshold, memory
        self.reset()

    def reset(self) -> None:
        self.n, self.windows, self.mean, self.variance = 0, 0, 0.0, 0.0
        self.cumulative, self.minimum = 0.0, 0.0

    def update(self, x: float, events: int = 1, variance: float | None = None) -> bool:
        """Add a window of ``events`` events whose mean loss is ``x``; whether the test fires."""
        if events <= 0 or not math.isfinite(x):
            return False
        second = (variance or 0.0) + (x - self.mean) ** 2  # mean squared deviation of its events from m
        noise = max(self.variance, second)  # a window noisier than the past is weighed by its own noise
        if self.n >= WARMUP_EVENTS and noise > 0:
            rise = 2 * self.delta * abs(self.mean)
            self.cumulative += events * rise / noise * (x - self.mean - rise / 2)
            self.minimum = min(self.minimum, self.cumulative)
        weight = events / (min(self.n, self.memory) + events)
        if self.windows == 0:
            self.mean, self.variance = x, variance or 0.0
        else:
            self.mean += weight * (x - self.mean)
            self.variance += weight * (second - self.variance)
        self.n += events
        self.windows += 1
        return self.cumulative - self.minimum > self.threshold

    def state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "windows": self.windows,
            "mean": self.mean,
            "variance": self.variance,
            "cumulative": self.cumulative,
            "minimum": self.minimum,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.n = int(state.get("n", 0))
        self.windows = int(state.get("windows", self.n))
        self.mean = float(state.get("mean", 0.0))
        self.variance = float(state.get("variance", 0.0))
        self.cumulative = float(state.get("cumulative", 0.0))
        self.minimum = float(state.get("minimum", 0.0))
