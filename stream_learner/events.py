"""Events as columns: the unit that flows from the codec through windowing to the learner.

An `EventBatch` holds one array per field, never a Python object per event. Ids are hashed once, in
the codec, to 64-bit keys (`hash_id`); the model maps keys to table rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash

#: Event types and the label each implies when the event carries no explicit label.
EVENT_LABELS: dict[str, float] = {
    "impression": 0.0,
    "view": 0.0,
    "click": 1.0,
    "add_to_cart": 1.0,
    "purchase": 1.0,
}

#: Key given to a missing context value.
MISSING_KEY = 0


def hash_id(value: str) -> int:
    """Stable signed 64-bit key of an id string (xxh64; the same in every process and language)."""
    key = xxhash.xxh64_intdigest(value.encode())
    return key - (1 << 64) if key >= 1 << 63 else key


@dataclass(frozen=True)
class EventBatch:
    """Decoded, valid events in columns. All arrays have the same length."""

    user: np.ndarray  # int64 keys
    item: np.ndarray  # int64 keys
    context: np.ndarray  # int64 keys, shape (n, number of context fields)
    label: np.ndarray  # float32 in [0, 1]
    timestamp_ms: np.ndarray  # int64 event time
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64
    item_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # original item ids

    def __len__(self) -> int:
        return len(self.label)

    @staticmethod
    def empty(context_fields: int = 0) -> EventBatch:
        return EventBatch(
            user=np.empty(0, np.int64),
            item=np.empty(0, np.int64),
            context=np.empty((0, context_fields), np.int64),
            label=np.empty(0, np.float32),
            timestamp_ms=np.empty(0, np.int64),
            partition=np.empty(0, np.int32),
            offset=np.empty(0, np.int64),
            item_ids=np.empty(0, dtype=object),
        )

    def take(self, index: np.ndarray) -> EventBatch:
        """The events at `index` (an integer or boolean array), in that order."""
        return EventBatch(
            user=self.user[index],
            item=self.item[index],
            context=self.context[index],
            label=self.label[index],
            timestamp_ms=self.timestamp_ms[index],
            partition=self.partition[index],
            offset=self.offset[index],
            item_ids=self.item_ids[index],
        )

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        if len(batches) == 1:
            return batches[0]
        return EventBatch(
            user=np.concatenate([b.user for b in batches]),
            item=np.concatenate([b.item for b in batches]),
            context=np.concatenate([b.context for b in batches]),
            label=np.concatenate([b.label for b in batches]),
            timestamp_ms=np.concatenate([b.timestamp_ms for b in batches]),
            partition=np.concatenate([b.partition for b in batches]),
            offset=np.concatenate([b.offset for b in batches]),
            item_ids=np.concatenate([b.item_ids for b in batches]),
        )

    def sorted_by_time(self) -> EventBatch:
        """Deterministic order: event time, then partition, then offset."""
        order = np.lexsort((self.offset, self.partition, self.timestamp_ms))
        return self.take(order)
