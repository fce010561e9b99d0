"""Page-Hinkley test for an increase of the mean of the prequential loss."""

from __future__ import annotations

from typing import Any

#: Weight of the newest loss in Page-Hinkley's running mean.
MEAN_FADING = 0.1


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
