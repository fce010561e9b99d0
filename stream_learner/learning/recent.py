"""The most recently active items, which serving recommends from when it is given no candidates."""

from __future__ import annotations

import numpy as np


class RecentItems:
    """Item ids by their newest event time, at most ``limit`` of them (0 keeps none). Items seen
    at the same time rank by id, so the order never depends on how the state came about (trained
    through, or restored from a snapshot): replay and restarts reproduce it exactly."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, int] = {}

    def add(self, item_ids: np.ndarray, times_ms: np.ndarray) -> None:
        """Note events of these items at these times."""
        if self.limit == 0:
            return
        self._seen.update(zip(item_ids.tolist(), times_ms.tolist(), strict=True))
        if len(self._seen) > 4 * self.limit:  # trimmed now and then, not at every window
            self._seen = dict(sorted(self._seen.items(), key=_rank)[-self.limit :])

    def newest(self) -> list[str]:
        """The item ids, newest first."""
        ranked = sorted(self._seen.items(), key=_rank, reverse=True)
        return [item for item, _ in ranked[: self.limit]]

    def state(self) -> list[str]:
        return self.newest()

    def restore(self, items: list[str]) -> None:
        """Take `state`'s list back (its order is all that matters)."""
        self._seen = {str(item): -i for i, item in enumerate(items)}


def _rank(entry: tuple[str, int]) -> tuple[int, str]:
    item, time_ms = entry
    return time_ms, item
