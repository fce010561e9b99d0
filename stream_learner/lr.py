"""Learning-rate control from the prequential validation loss of each window.

A controller sees one validation loss per window and returns the rate for training that window,
always within [lr.min, lr.max], with the reason whenever the rate changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from stream_learner.config import LRSettings


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


def make_controller(settings: LRSettings) -> LRController:
    return ConstantLR(settings)
