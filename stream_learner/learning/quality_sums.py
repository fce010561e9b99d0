"""Log loss and AUC of a window whose events are spread over the ranks of a job.

Each rank turns its events into parts that add up across ranks (`parts`): the sums of the events' log
losses and of their squares, their count, and a histogram of positives and negatives over `BINS`
bins of the logit; the sum of every rank's parts gives the window's log loss and the variance of one
event's loss exactly (`quality.log_loss` and `log_loss_variance`, up to the order of the additions)
and its AUC from the histogram (`binned_auc`), which differs from the exact AUC only through pairs of
events whose logits share a bin (bins are 2 * LOGIT_LIMIT / BINS = 0.002 wide).
"""

from __future__ import annotations

import math

import numpy as np

#: Histogram bins over the logit, and the logit range they cover (beyond it: the outer bins).
BINS = 1 << 14
LOGIT_LIMIT = 16.0
_EPS = 1e-7  # as quality.log_loss clips


#: Where the histograms begin in `parts`.
_HIST = 3


def parts(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """[sum of log losses, sum of their squares, count, positives per bin (BINS), negatives per bin
    (BINS)] as float64."""
    out = np.zeros(_HIST + 2 * BINS)
    if len(labels) == 0:
        return out
    p = np.clip(probs.astype(np.float64), _EPS, 1 - _EPS)
    y = labels.astype(np.float64)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    out[:_HIST] = losses.sum(), np.square(losses).sum(), len(labels)
    logit = np.log(p) - np.log1p(-p)
    scaled = (logit + LOGIT_LIMIT) * (BINS / (2 * LOGIT_LIMIT))
    bins = np.clip(scaled.astype(np.int64), 0, BINS - 1)
    positive = labels >= 0.5
    out[_HIST : _HIST + BINS] = np.bincount(bins[positive], minlength=BINS)
    out[_HIST + BINS :] = np.bincount(bins[~positive], minlength=BINS)
    return out


def quality(total: np.ndarray) -> tuple[float, float, int, float]:
    """Log loss, AUC, count and the variance of one event's loss from the sum of every rank's
    `parts` (the variance is 0 for fewer than two events, as `quality.log_loss_variance`)."""
    count = int(total[2])
    loss = float(total[0] / count) if count else math.nan
    variance = max(0.0, float(total[1] / count) - loss**2) if count >= 2 else 0.0
    return loss, binned_auc(total[_HIST : _HIST + BINS], total[_HIST + BINS :]), count, variance


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC from histograms of positives and negatives over ordered bins (pairs in one bin count
    half); nan when one class is absent."""
    pos, neg = float(positives.sum()), float(negatives.sum())
    if pos == 0 or neg == 0:
        return math.nan
    below = np.cumsum(negatives) - negatives  # negatives in lower bins
    return float(np.sum(positives * (below + 0.5 * negatives)) / (pos * neg))
