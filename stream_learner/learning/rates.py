"""Learning-rate control from the prequential validation loss of each window.

A controller sees one validation loss per window (the model's loss on the window before training on
it) and returns the rate for training that window, always within [lr.min, lr.max], with the reason
whenever the rate changes. Policies:

- ``constant``: lr.initial for every window.
- ``plateau``: multiply by lr.factor when the loss has not improved on its best for lr.patience
  windows, down to lr.min (the best is forgotten at every change, so each rate gets a fair trial).
- ``drift``: ``plateau`` while the stream is settled, plus a change detector on the loss
  (Page-Hinkley or ADWIN). When it fires, the stream has changed: the rate jumps to lr.max and the
  update says ``drift``, on which the learner scales the table optimiser's accumulated squared
  gradients by lr.drift_forget (of the rows the drift's window trains, before training on it), so
  that the steps really grow; then the rate returns to the rate it had before the drift by
  lr.drift_decay per window, and plateau decay takes over again.

With the Adagrad family, forgetting is the larger part of the reaction: a row's step is
rate / sqrt(its sum of squared gradients), so scaling the sums by f multiplies the row's next steps
by 1 / sqrt(f), and the boost fades by itself as the row sees new gradients, fastest for the rows
with the most data. The benchmark (benchmarks/quality.py) measures the parts: on its stream the
forgetting gives nearly all of the gain, the rate jump little, and any rate below lr.initial a lower
AUC even late in a stationary stream (Adagrad already anneals each row), which is why lr.min
defaults to lr.initial, turning plateau decay off; it is there for optimisers that do not anneal.

Per-id drift detection (lr.drift_reset_z, in the learner): forgetting treats every row the same,
though a drift usually changes some ids only. So the first window trained after a detection also
resets (new weights, no optimiser state, as a row given to a new id) the user and item rows whose
own prequential loss in that window shows a change: per event, the excess of the log loss over what
the model expects from its own p, (p - y) logit(p), which has mean 0 and variance p (1 - p)
logit(p)^2 if p is right; a row with at least 10 events is reset when its sum is above drift_reset_z
(3) standard deviations and its mean above 0.1 nats. A changed item raises the loss of every user
who sees it too, so the field with the most events per row (the items here) is tested first and the
events of the rows it flags are left out of the next field's test. On the benchmark (3 seeds each):
in the small catalogue the abrupt recovery went from 2/5/11 windows to 2/2/4 (the oracle's 2/2/4;
the best constant 7/5/11), which meets the target on every seed; the gradual one stayed 11/13/17 and
the steady-state AUC moved by at most 0.0002. The gain is in the first windows after the abrupt
drift (window 31: AUC +0.003/+0.012/+0.010; default stream +0.006/+0.017/+0.013), but the recovery
counts hinge on thin margins: on seed 1 the AUC of window 32 is back by 0.0012, on seed 2 window 34
by 0.0010 (without the reset it missed by 0.0019 and came back only at window 41). On the default
stream recovery moved by a window at most (abrupt 10/3/6 from 10/4/6, gradual 17/None/19 from
17/None/17, steady state within 0.0004), no false alarms either way (the reset follows detections).
Tried and left out (some in earlier forms of the test): testing every window rather than after a
detection reset a few rows a window on a settled stream and cost 0.0004 to 0.0007 of steady-state
AUC; testing both fields on all events reset tens of users who had merely seen changed items (abrupt
recovery 11 on seed 2 of the small catalogue instead of 4); rows with fewer than 10 events were
flagged by a single surprising event (a positive at p = 0.05 alone gives a z of 4); zeroing only the
flagged rows' optimiser state instead of resetting them did about as well. The test keeps no state:
a per-row running mean of the excess (an EMA and a count per row, which would have had to travel in
snapshots as row-aligned ``features.<field>.*`` tensors) as the baseline instead of 0 changed the
recoveries by at most a window either way, because a settled row's excess is small (0.00 to 0.04
nats) next to a changed one's (0.1 to 0.6); without it there is nothing to snapshot, slice into
deltas or rebuild.

Tried and not kept: more passes over the first windows after a drift (2 or 3 passes for 1 to 4
windows from the detection, on the idea that each new-regime event is worth more). On the
benchmark's default stream it lowered the steady-state AUC on each of 3 seeds (by 0.001 to 0.002
with 2 passes for 2 windows, by 0.0045 to 0.006 with 3 on seed 0) and shortened no recovery; on its
small catalogue it moved steady state by less than the noise and the abrupt recovery by -2 to +5
windows, in no consistent direction. A second pass probably adds back to the accumulators what
forgetting took out, and fits the window's noise at the large steps of a drift.

The detectors look for *increases* of the loss only: a falling loss is the model learning.
Page-Hinkley's parameters are in loss units per window; its defaults suit windows of some thousands
of events (a window's mean log loss then has a noise of about 0.6 / sqrt(events), 0.006 for 10 000
events; raise lr.ph_threshold for smaller windows). ADWIN estimates the noise itself.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from stream_learner.config import LRSettings

#: A loss counts as an improvement when it is below the best by more than this fraction of it.
PLATEAU_RTOL = 1e-3
#: Weight of the newest loss in Page-Hinkley's running mean.
MEAN_FADING = 0.1
#: ADWIN's noise estimate never goes below this fraction of the mean loss (for exactly flat input).
ADWIN_MIN_RELATIVE_STD = 1e-3


@dataclass(frozen=True)
class LRUpdate:
    lr: float
    reason: str | None = None  # set when the rate changed
    drift: bool = False


class LRController(Protocol):
    lr: float

    def update(self, validation_loss: float) -> LRUpdate: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class ConstantLR:
    """The same rate for every window."""

    def __init__(self, settings: LRSettings) -> None:
        self.lr = settings.initial

    def update(self, validation_loss: float) -> LRUpdate:
        return LRUpdate(self.lr)

    def state(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def restore(self, state: dict[str, Any]) -> None:
        self.lr = float(state.get("lr", self.lr))


class PlateauLR:
    """Decay by ``factor`` after ``patience`` windows without improvement, down to lr.min."""

    def __init__(self, settings: LRSettings) -> None:
        self.settings = settings
        self.lr = settings.initial
        self.best = math.inf
        self.waited = 0

    def update(self, validation_loss: float) -> LRUpdate:
        if not math.isfinite(validation_loss):
            return LRUpdate(self.lr)
        if validation_loss < self.best * (1 - PLATEAU_RTOL):
            self.best, self.waited = validation_loss, 0
            return LRUpdate(self.lr)
        self.waited += 1
        if self.waited < self.settings.patience or self.lr <= self.settings.min:
            return LRUpdate(self.lr)
        previous, self.lr = self.lr, max(self.settings.min, self.lr * self.settings.factor)
        reason = (
            f"plateau: no improvement on loss {self.best:.5g} for {self.waited} windows: "
            f"rate {previous:.4g} -> {self.lr:.4g}"
        )
        self.best, self.waited = validation_loss, 0
        return LRUpdate(self.lr, reason)

    def _clamp(self, lr: float) -> float:
        return min(self.settings.max, max(self.settings.min, lr))

    def state(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": None if math.isinf(self.best) else self.best, "waited": self.waited}

    def restore(self, state: dict[str, Any]) -> None:
        self.lr = self._clamp(float(state.get("lr", self.lr)))
        best = state.get("best")
        self.best = math.inf if best is None else float(best)
        self.waited = int(state.get("waited", 0))


class PageHinkley:
    """Page-Hinkley test for an increase of the mean: alarm when the cumulative deviation above the
    running mean (less ``delta`` per value) rises more than ``threshold`` above its minimum. The mean
    fades (weight ``MEAN_FADING`` once enough values were seen), so a loss that has fallen while the
    model learnt is compared with its recent level, not with its history."""

    def __init__(self, delta: float, threshold: float) -> None:
        self.delta, self.threshold = delta, threshold
        self.reset()

    def reset(self) -> None:
        self.n, self.mean, self.cumulative, self.minimum = 0, 0.0, 0.0, 0.0

    def update(self, x: float) -> bool:
        self.n += 1
        self.mean += (x - self.mean) * max(1 / self.n, MEAN_FADING)
        self.cumulative += x - self.mean - self.delta
        self.minimum = min(self.minimum, self.cumulative)
        return self.cumulative - self.minimum > self.threshold

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "cumulative": self.cumulative, "minimum": self.minimum}

    def restore(self, state: dict[str, Any]) -> None:
        self.n = int(state.get("n", 0))
        self.mean = float(state.get("mean", 0.0))
        self.cumulative = float(state.get("cumulative", 0.0))
        self.minimum = float(state.get("minimum", 0.0))


class Adwin:
    """ADWIN (Bifet and Gavaldà 2007) over the last ``max_len`` values: when some split of the window
    into an older and a newer part (each at least ``min_part`` values) has means further apart than
    the bound for confidence ``delta``, the older part is dropped; an alarm is raised when the newer
    mean is the higher. A controller sees one value per window, a mean over thousands of events and
    so close to normal, which ADWIN's distribution-free bound (made for single values in [0, 1])
    would need tens of windows to separate: the bound here is the normal one,
    sqrt(2 / m * variance * ln(2 ln(n) / delta)) with m the harmonic mean of the two parts' sizes,
    and the variance is the pooled variance *within* the two parts, so that neither the change
    itself nor the learning curve before it widens the bound; it is trusted only once the window
    holds ``min_len`` values. It usually needs one window more than Page-Hinkley, but sets its own
    scale: about one false alarm in 1000 windows of stationary noise at delta 0.002, whatever the
    size of the noise."""

    def __init__(self, delta: float, max_len: int = 64, min_part: int = 2, min_len: int = 8) -> None:
        self.delta, self.max_len, self.min_part, self.min_len = delta, max_len, min_part, min_len
        self.values: deque[float] = deque(maxlen=max_len)

    def reset(self) -> None:
        self.values.clear()

    def update(self, x: float) -> bool:
        self.values.append(x)
        n = len(self.values)
        if n < max(self.min_len, 2 * self.min_part):
            return False
        sums, squares = [0.0], [0.0]  # prefix sums of the values and of their squares
        for v in self.values:
            sums.append(sums[-1] + v)
            squares.append(squares[-1] + v * v)
        total, total_sq = sums[-1], squares[-1]
        log_term = math.log(2 * math.log(n) / self.delta)
        floor = (ADWIN_MIN_RELATIVE_STD * total / n) ** 2
        for split in range(self.min_part, n - self.min_part + 1):
            n0, n1 = split, n - split
            older, newer = sums[split] / n0, (total - sums[split]) / n1
            within = squares[split] - n0 * older**2 + (total_sq - squares[split]) - n1 * newer**2
            variance = max(within / (n - 2), floor)
            m = 1 / (1 / n0 + 1 / n1)
            if abs(newer - older) > math.sqrt(2 / m * variance * log_term):
                for _ in range(split):
                    self.values.popleft()
                return newer > older
        return False

    def state(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def restore(self, state: dict[str, Any]) -> None:
        self.values = deque((float(v) for v in state.get("values", [])), maxlen=self.max_len)


class DriftLR(PlateauLR):
    """`PlateauLR` while settled; when the change detector fires, the rate jumps to lr.max (and the
    update carries ``drift``), then returns to the rate it had before the drift (the settled rate),
    multiplied by lr.drift_decay per window; plateau decay resumes once it is back."""

    def __init__(self, settings: LRSettings) -> None:
        super().__init__(settings)
        self.detector: PageHinkley | Adwin = (
            Adwin(settings.adwin_delta)
            if settings.detector == "adwin"
            else PageHinkley(settings.ph_delta, settings.ph_threshold)
        )
        self.settled: float | None = None  # the rate to return to while recovering from a drift

    def update(self, validation_loss: float) -> LRUpdate:
        if not math.isfinite(validation_loss):
            return LRUpdate(self.lr)
        if self.detector.update(validation_loss):
            self.detector.reset()
            self.best, self.waited = validation_loss, 0
            if self.settled is None:  # a drift while recovering returns to the same settled rate
                self.settled = self.lr
            previous, self.lr = self.lr, self.settings.max
            reason = (
                f"drift detected by {self.settings.detector} at validation loss {validation_loss:.5g}: "
                f"rate {previous:.4g} -> {self.lr:.4g}, returning to {self.settled:.4g}"
            )
            return LRUpdate(self.lr, reason, drift=True)
        if self.settled is None:
            return super().update(validation_loss)
        if validation_loss < self.best * (1 - PLATEAU_RTOL):
            self.best, self.waited = validation_loss, 0  # the plateau count starts after the drift
        previous = self.lr
        self.lr = max(self.settled, self.lr * self.settings.drift_decay)
        if self.lr <= self.settled:
            self.lr, self.settled = self.settled, None
            self.waited = 0
            return LRUpdate(self.lr, f"drift recovery over: rate {previous:.4g} -> {self.lr:.4g}")
        return LRUpdate(self.lr, f"recovering from drift: rate {previous:.4g} -> {self.lr:.4g}")

    def state(self) -> dict[str, Any]:
        return {**super().state(), "settled": self.settled, "detector": self.detector.state()}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        settled = state.get("settled")
        self.settled = None if settled is None else self._clamp(float(settled))
        self.detector.restore(state.get("detector", {}))


def make_controller(settings: LRSettings) -> LRController:
    if settings.policy == "plateau":
        return PlateauLR(settings)
    if settings.policy == "drift":
        return DriftLR(settings)
    return ConstantLR(settings)
