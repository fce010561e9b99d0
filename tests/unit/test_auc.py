"""The synthetic producer's streamed AUC: equal to the exact one within 1e-3, in constant memory."""

from __future__ import annotations

import math

import numpy as np

from stream_learner.learning.quality import roc_auc
from stream_learner.tools.auc import StreamingAUC


def test_streamed_auc_matches_the_exact_one():
    rng = np.random.default_rng(3)
    for spread in (0.02, 0.3, 3.0):  # scores bunched together, and spread out
        logits = rng.normal(0, spread, 200_000)
        probs = 1 / (1 + np.exp(-logits))
        labels = (rng.random(len(probs)) < probs).astype(np.float32)
        streamed = StreamingAUC()
        for lo in range(0, len(probs), 1000):
            streamed.add(labels[lo : lo + 1000], probs[lo : lo + 1000])
        assert abs(streamed.value() - roc_auc(labels, probs)) < 1e-3, spread


def test_ties_count_half_and_a_missing_class_gives_nan():
    auc = StreamingAUC()
    auc.add(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    assert auc.value() == 0.5
    auc.add(np.array([1.0, 0.0]), np.array([0.9, 0.1]))
    assert auc.value() == (0.5 + 1 + 1 + 1) / 4
    only_positives = StreamingAUC()
    only_positives.add(np.ones(3), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(only_positives.value())
