"""The AUC of a stream of scores in constant memory: positives and negatives counted in score bins.

For the synthetic producer's report (the best AUC any model can reach on the events produced),
which runs for days in the compose stack: keeping every label and probability grew by 12 bytes per
event. Pairs that fall in one bin count as ties (half), so the result is within the share of
positive-negative pairs that share a bin of the exact value: with 2^14 bins over [0, 1], well below
1e-3 for any spread of scores.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 1 << 14


class StreamingAUC:
    """ROC AUC of scores in [0, 1] added batch by batch."""

    def __init__(self, bins: int = BINS) -> None:
        self._positive = np.zeros(bins, np.int64)
        self._negative = np.zeros(bins, np.int64)

    def add(self, labels: np.ndarray, scores: np.ndarray) -> None:
        """Labels >= 0.5 count as positive."""
        bins = len(self._positive)
        index = np.clip((np.asarray(scores, np.float64) * bins).astype(np.int64), 0, bins - 1)
        positive = np.asarray(labels) >= 0.5
        self._positive += np.bincount(index[positive], minlength=bins)
        self._negative += np.bincount(index[~positive], minlength=bins)

    def value(self) -> float:
        """P(a positive scores above a negative), ties halved; nan while a class is missing."""
        pos, neg = int(self._positive.sum()), int(self._negative.sum())
        if pos == 0 or neg == 0:
            return math.nan
        negatives_below = np.cumsum(self._negative) - self._negative
        wins = (self._positive * negatives_below).sum() + 0.5 * (self._positive * self._negative).sum()
        return float(wins / (pos * neg))
