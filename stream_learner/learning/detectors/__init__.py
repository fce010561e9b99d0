"""Change detectors on the prequential loss: one per module, all following `ChangeDetector`.

They look for *increases* of the loss only: a falling loss is the model learning. See
docs/decisions/loss-detectors.md.
"""

from __future__ import annotations

from typing import Any, Protocol

from stream_learner.config import LRSettings
from stream_learner.learning.detectors.adwin import Adwin
from stream_learner.learning.detectors.page_hinkley import PageHinkley


class ChangeDetector(Protocol):
    """Sees one loss per window; says when the loss has risen for good."""

    def update(self, x: float, events: int = 1, variance: float | None = None) -> bool:
        """Add a window of ``events`` events whose mean loss is ``x`` (``variance``: of one event's
        loss about it, None when unknown); True when a rise is detected."""
        ...

    def reset(self) -> None: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


def make_detector(settings: LRSettings) -> ChangeDetector:
    """The detector ``lr.detector`` names, with its settings."""
    if settings.detector == "adwin":
        return Adwin(settings.adwin_delta)
    return PageHinkley(settings.ph_delta, settings.ph_threshold)


__all__ = ["Adwin", "ChangeDetector", "PageHinkley", "make_detector"]
