"""From event columns to model inputs: one table row per field per event.

Ids arrive as 64-bit keys (see `events.hash_id`); each field maps keys to rows of its own table by
hashing into a configured number of buckets.
"""

from __future__ import annotations

import numpy as np

from stream_learner.config import ModelSettings
from stream_learner.events import EventBatch
from stream_learner.models.base import FieldSpec


class HashedField:
    """Rows by hashing: ``key mod buckets``. Stateless; collisions are accepted."""

    def __init__(self, buckets: int) -> None:
        self.rows = buckets

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        return (keys.view(np.uint64) % np.uint64(self.rows)).astype(np.int64)


class FeatureMapper:
    """Maps an `EventBatch` to an (n, fields) int64 matrix of rows: user, item, then context fields."""

    def __init__(self, settings: ModelSettings) -> None:
        self.fields: dict[str, HashedField] = {
            "user": HashedField(settings.user_buckets),
            "item": HashedField(settings.item_buckets),
        }
        for name in settings.context_fields:
            self.fields[f"ctx.{name}"] = HashedField(settings.context_buckets)

    def specs(self) -> tuple[FieldSpec, ...]:
        return tuple(FieldSpec(name, f.rows) for name, f in self.fields.items())

    def rows(self, batch: EventBatch) -> np.ndarray:
        columns = [batch.user, batch.item] + [batch.context[:, i] for i in range(batch.context.shape[1])]
        out = np.empty((len(batch), len(columns)), dtype=np.int64)
        for i, (field, keys) in enumerate(zip(self.fields.values(), columns, strict=True)):
            out[:, i] = field.lookup(keys)
        return out
