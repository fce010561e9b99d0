"""Log loss and AUC against their definitions."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from stream_learner.learning.quality import log_loss, roc_auc


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels >= 0.5], scores[labels < 0.5]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_counts_ordered_pairs_with_ties_as_half(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([float(y) for y, _ in pairs])
    scores = np.array([s / 5 for _, s in pairs])
    if labels.min() == labels.max():
        assert math.isnan(roc_auc(labels, scores))
    else:
        assert math.isclose(roc_auc(labels, scores), brute_auc(labels, scores))


def test_log_loss_is_the_mean_cross_entropy() -> None:
    labels, probs = np.array([1.0, 0.0, 1.0]), np.array([0.9, 0.2, 0.5])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5)) / 3
    assert math.isclose(log_loss(labels, probs), expected)
    assert math.isfinite(log_loss(np.array([1.0]), np.array([0.0])))  # clipped, not infinite
    assert math.isnan(log_loss(np.array([]), np.array([])))
