"""Running per-id counts as model inputs: how often each user and each item was seen, and how often
positively (the features production recommenders compute for every id).

Per counted field (the user and the item field) the state is two row-aligned float64 arrays, indexed
by the field's table rows like its embeddings: ``features.<field>.events`` and
``features.<field>.positives`` (the sum of the labels). They travel in snapshots with the other
``features.*`` tensors, so deltas slice them by the rows a window touched, and serving computes the
same inputs from the snapshot it loaded (`FeatureMapper.inputs`).

The inputs of an event are, per counted field, in this order (`INPUTS_PER_FIELD`):

1. ``rate``: the logit of the row's positive rate, smoothed towards the global positive rate with
   `PRIOR` pseudo-events: logit((positives + PRIOR p) / (events + PRIOR)), p the global rate (every
   event falls in exactly one row of a field, so p is the ratio of the first counted field's sums);
2. ``activity``: log1p(events) / ACTIVITY_SCALE.

An event is scored and trained with the counts *before* its window (never its own label: a count that
held it would leak the label into the input), and the window is counted once it was trained. Rows
given to new ids (dynamic tables) and rows the drift policy resets start again from zero.

What a trained window adds to the counts is an `Observation` (the counted fields' rows of its events,
their labels and the rows to forget first): a rank of a distributed job applies every rank's, so that
its counts are those of one process that saw every event (`Trainer.whole_window`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Pseudo-events of the global rate in each row's smoothed rate.
PRIOR = 5.0
#: log1p(events) is divided by this, to keep the input near the scale of the rate logits.
ACTIVITY_SCALE = 5.0
INPUTS_PER_FIELD = 2
ARRAYS = ("events", "positives")
#: The smoothed rate is clipped to [RATE_CLIP, 1 - RATE_CLIP] before its logit.
RATE_CLIP = 1e-3


@dataclass(frozen=True)
class Observation:
    """What a trained window adds to the counts: the counted fields' rows of its events ((n, counted
    fields), in field order), their labels, and per counted field (by index) the rows to forget
    before counting (given to new ids, or reset)."""

    rows: np.ndarray
    labels: np.ndarray
    fresh: Mapping[int, np.ndarray]


class IdCounts:
    """Event and positive counts of every row of the counted fields (by field index, in order)."""

    def __init__(self, fields: Sequence[tuple[str, int]]) -> None:
        self.names = [name for name, _ in fields]
        self.arrays = [{a: np.zeros(rows, np.float64) for a in ARRAYS} for _, rows in fields]

    @property
    def width(self) -> int:
        """Inputs per event."""
        return INPUTS_PER_FIELD * len(self.names)

    def global_rate(self) -> float:
        events = float(self.arrays[0]["events"].sum())
        return float(self.arrays[0]["positives"].sum()) / events if events > 0 else 0.5

    def inputs(self, rows: np.ndarray, fresh: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
        """(n, width) float32 inputs of (n, fields) rows; rows in ``fresh`` (field index -> rows about
        to be given to new ids) count as never seen."""
        prior = self.global_rate()
        out = np.empty((len(rows), self.width), np.float32)
        for i, counts in enumerate(self.arrays):
            column = rows[:, i]
            events, positives = counts["events"][column], counts["positives"][column]
            if fresh and i in fresh and len(fresh[i]):
                new = np.isin(column, fresh[i])
                events, positives = np.where(new, 0.0, events), np.where(new, 0.0, positives)
            rate = np.clip((positives + PRIOR * prior) / (events + PRIOR), RATE_CLIP, 1 - RATE_CLIP)
            out[:, INPUTS_PER_FIELD * i] = np.log(rate) - np.log1p(-rate)
            out[:, INPUTS_PER_FIELD * i + 1] = np.log1p(events) / ACTIVITY_SCALE
        return out

    def observe(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """Count a trained window's events."""
        y = labels.astype(np.float64)
        for i, counts in enumerate(self.arrays):
            used, inverse = np.unique(rows[:, i], return_inverse=True)
            counts["events"][used] += np.bincount(inverse, minlength=len(used))
            counts["positives"][used] += np.bincount(inverse, y, minlength=len(used))

    def reset(self, fresh: Mapping[int, np.ndarray]) -> None:
        """Forget the counts of rows given to new ids (field index -> rows)."""
        for i, rows in fresh.items():
            if i < len(self.arrays):
                for values in self.arrays[i].values():
                    values[rows] = 0.0

    def state(self) -> dict[str, np.ndarray]:
        return {
            f"features.{name}.{a}": counts[a]
            for name, counts in zip(self.names, self.arrays, strict=True)
            for a in ARRAYS
        }

    def load(self, tensors: Mapping[str, Any]) -> None:
        """Load what `state` gave (numpy arrays or CPU tensors); raises ValueError when an array is
        missing or has another shape."""
        loaded = []
        for name, counts in zip(self.names, self.arrays, strict=True):
            arrays = {}
            for a in ARRAYS:
                key = f"features.{name}.{a}"
                if key not in tensors:
                    raise ValueError(f"missing feature state {key}")
                value = np.asarray(tensors[key])
                if value.shape != counts[a].shape:
                    raise ValueError(
                        f"{key} has shape {tuple(value.shape)}, but the table has {tuple(counts[a].shape)}"
                    )
                arrays[a] = value.astype(np.float64, copy=True)
            loaded.append(arrays)
        self.arrays = loaded
