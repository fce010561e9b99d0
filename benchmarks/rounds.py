"""How every benchmark that compares contenders reports them: each contender runs several rounds,
the contenders alternated within each round (a shared machine's speed drifts by tens of percent
over minutes, and alternating spreads the drift over all of them), and the figure is the median
round, never the best."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def median_round(rounds: Sequence[T], key: Callable[[T], float]) -> T:
    """The round at the median of ``key`` (the lower middle one of an even count): its other
    figures (start-up, stage times) go with the median."""
    return sorted(rounds, key=key)[(len(rounds) - 1) // 2]
