"""Pruning during training: which rows of a full dynamic table make room for new ids.

A dynamic table (`features.DynamicField`) has a fixed number of slots, its memory ceiling
(``model.user_buckets`` / ``model.item_buckets``). Below the ceiling nothing is removed. When a window
brings more new ids than there are free slots, the table reclaims the slots worth least, at least
``fraction`` of the table at once (so that the next windows find free slots and the choice, a sort
of the table, is not made every window), and gives them to the new ids; the slots it does not give
away stay free. A reclaimed slot's rows are reset like those of a slot given to a new id (initial
weights, no optimiser state, no real-time sums), so its old id scores as an unseen id, in the
learner and at the subscriber, and the snapshot shows the slot free.

What a row is worth keeping (``model.prune_by``, the smallest first; ties go to the lowest slot):

- ``least_recent``: the time its id was last seen (event time): the table's own ``last_seen_ms``;
- ``least_seen``: how many events its id had (the real-time features' ``events`` sum of its row);
- ``smallest_norm``: the L2 norm of its rows over the field's tables (the weights say little).

Every choice is a function of the state a snapshot carries, so a restored learner prunes as the one
it replaces would have: exactly-once training holds. Rows whose id was seen within ``guard_ms`` of
the window's newest event (the feedback delay) are never reclaimed: a label of their id may still
be pending in the real-time features.

Hashed tables are never pruned: every row is shared by whichever ids hash to it, and their memory is
the table whatever the stream; docs/decisions/pruning.md says why the dynamic table is the way to
bound memory on an unbounded id space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stream_learner.learning.realtime import EVENTS, RealtimeFeatures

PruneBy = Literal["least_recent", "least_seen", "smallest_norm"]
#: Worth of every row of one field (row-aligned; larger is kept longer), computed when needed ...
RowWorth = Callable[[], np.ndarray]
#: ... and of the field with a given index.
WorthOf = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class Pruning:
    """How a full dynamic table reclaims slots (see the module docstring)."""

    by: PruneBy = "least_recent"
    fraction: float = 1 / 64
    guard_ms: int = 0

    def count(self, rows: int, needed: int) -> int:
        """How many slots to reclaim when ``needed`` more are wanted than are free."""
        return max(needed, int(rows * self.fraction))

    def choose(self, worth: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` slots of least ``worth`` among the (sorted) ``candidates``, ties going to the
        lowest slot, sorted; in linear time (a partition, not a sort of the table)."""
        if count >= len(candidates):
            return candidates
        values = worth[candidates]
        kth = np.partition(values, count - 1)[count - 1]
        below = candidates[values < kth]
        ties = candidates[values == kth][: count - len(below)]
        return np.sort(np.concatenate((below, ties)))


class Worth:
    """What each row of a field is worth keeping under ``by``, from the learner's live state: its
    real-time features, and its model's tables (``nn.Embedding`` by name; typed loosely, since the
    table, which imports this module, must not import torch)."""

    def __init__(
        self,
        by: PruneBy,
        realtime: RealtimeFeatures | None,
        tables: Mapping[str, Any],
        table_field: Mapping[str, int],
    ) -> None:
        self.by, self.realtime, self.tables, self.table_field = by, realtime, tables, table_field

    def provider(self) -> WorthOf | None:
        """What `FeatureMapper.place` takes: None for ``least_recent`` (the table's own state)."""
        return None if self.by == "least_recent" else self

    def __call__(self, field: int) -> np.ndarray:
        if self.by == "least_seen":
            assert self.realtime is not None  # (the settings refuse least_seen without count_features)
            return self.realtime.sums[field][:, EVENTS]
        squares = [
            t.weight.detach().float().pow(2).sum(1).cpu().numpy()
            for name, t in self.tables.items()
            if self.table_field[name] == field
        ]
        return np.sum(squares, axis=0)
