"""Learning-rate control from the prequential validation loss of each window.

A controller sees one validation loss per window (the model's loss on the window before training on
it) and returns the rate for training that window, always within [lr.min, lr.max], with the reason
whenever the rate changes. Policies:

- ``constant``: lr.initial for every window.
- ``plateau``: multiply by lr.factor when the loss has not improved on its best for lr.patience
  windows, down to lr.min (the best is forgotten at every change, so each rate gets a fair trial).
- ``drift``: ``plateau`` while the stream is settled, plus a change detector on the loss
  (`stream_learner.learning.detectors`). When it fires, the stream has changed: the rate jumps to
  lr.max and the update says ``drift``, on which the learner reacts (`drift_reaction`); then the rate
  returns to the rate it had before the drift by lr.drift_decay per window, and plateau decay takes
  over again.

Why these defaults: docs/decisions/drift-forgetting.md and docs/decisions/per-id-drift-reset.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from stream_learner.config import LRSettings
from stream_learner.learning.detectors import make_detector

#: A loss counts as an improvement when it is below the best by more than this fraction of it.
PLATEAU_RTOL = 1e-3


@dataclass(frozen=True)
class LRUpdate:
    lr: float
    reason: str | None = None  # set when the rate changed
    drift: bool = False


class LRController(Protocol):
    lr: float

    def update(self, validation_loss: float, events: int = 1, variance: float | None = None) -> LRUpdate: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class ConstantLR:
    """The same rate for every window."""

    def __init__(self, settings: LRSettings) -> None:
        self.lr = settings.initial

    def update(self, validation_loss: float, events: int = 1, variance: float | None = None) -> LRUpdate:
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

    def update(self, validation_loss: float, events: int = 1, variance: float | None = None) -> LRUpdate:
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


class DriftLR(PlateauLR):
    """`PlateauLR` while settled; when the change detector fires, the rate jumps to lr.max (and the
    update carries ``drift``), then returns to the rate it had before the drift (the settled rate),
    multiplied by lr.drift_decay per window; plateau decay resumes once it is back."""

    def __init__(self, settings: LRSettings) -> None:
        super().__init__(settings)
        self.detector = make_detector(settings)
        self.settled: float | None = None  # the rate to return to while recovering from a drift

    def update(self, validation_loss: float, events: int = 1, variance: float | None = None) -> LRUpdate:
        if not math.isfinite(validation_loss):
            return LRUpdate(self.lr)
        if self.detector.update(validation_loss, events, variance):
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
