"""Prediction quality on a window: log loss and ROC AUC, as plain numpy functions."""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-7


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy; nan for an empty window."""
    if len(labels) == 0:
        return math.nan
    p = np.clip(probs.astype(np.float64), _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def log_loss_variance(labels: np.ndarray, probs: np.ndarray) -> float:
    """The variance of one event's log loss about the window's mean (what the drift detector and the
    guard need to tell a noisy small window from a large one whose loss really rose); 0 for fewer
    than two events."""
    if len(labels) < 2:
        return 0.0
    p = np.clip(probs.astype(np.float64), _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    return float(np.var(-(y * np.log(p) + (1 - y) * np.log1p(-p))))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); nan when one class is absent.

    Labels in (0, 1) count as positive when >= 0.5."""
    y = labels >= 0.5
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
