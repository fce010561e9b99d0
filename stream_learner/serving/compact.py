"""Ids, real-time inputs and feature state of a serving form (`stream_learner.scoring.compact`), read
without expanding its tables.

`CompactIds` maps ids to rows as the training form's mapping does, except that a dynamic table knows
only the slots present (a slot absent from the serving form maps its id to row 0, as an unseen id).
`compact_inputs` computes the real-time inputs of a request from the rows it needs only (gathered into
a table of those rows, the pending labels mapped onto them). `expand_features` gives the training
layout of the features, for the input follower that keeps them current (it needs every row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stream_learner.learning.features import FREE, OOV_ROW, HashedField, id_columns
from stream_learner.learning.realtime import (
    GLOBAL,
    LABELS_MS,
    NO_TIME,
    PENDING,
    SUMS,
    Formula,
    RealtimeFeatures,
)
from stream_learner.scoring import compact
from stream_learner.scoring.spec import ModelSpec, table_name


class _PresentSlots:
    """A dynamic table's lookup over the slots present: key -> slot, row 0 for any other key."""

    def __init__(self, tensors: Mapping[str, np.ndarray], key: str, name: str) -> None:
        rows = tensors[compact.rows_name(key)].astype(np.int64)
        keys = tensors[compact.aligned_name(key, f"features.{name}.keys")]
        slots = rows >= 1
        order = np.argsort(keys[slots], kind="stable")
        self._keys, self._slots = keys[slots][order], rows[slots][order]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        if len(self._keys) == 0:
            return np.full(len(keys), OOV_ROW, np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._slots[pos], OOV_ROW)


class CompactIds:
    """Rows of raw ids in a serving form of ``spec`` (``FeatureMapper.rows_for_ids``'s contract)."""

    def __init__(self, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
        self._names = [f.name for f in spec.fields]
        self._fields = [
            _PresentSlots(tensors, table_name(f.name), f.name)
            if f.table == "dynamic"
            else HashedField(f.name, f.rows)
            for f in spec.fields
        ]

    def rows_for_ids(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        context: Mapping[str, Sequence[str | None]] | None = None,
    ) -> np.ndarray:
        return self.rows_from_keys(id_columns(self._names, user_ids, item_ids, context))

    def rows_from_keys(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        """Rows of id key columns (one per field, in order)."""
        out = np.empty((len(columns[0]), len(self._fields)), np.int64)
        for i, (f, keys) in enumerate(zip(self._fields, columns, strict=True)):
            out[:, i] = f.lookup(np.asarray(keys, np.int64))
        return out


def _counted(spec: ModelSpec) -> list[str]:
    return [str(name) for name in spec.extra.get("count_fields", [])]


def _gather_sums(
    tensors: Mapping[str, np.ndarray], name: str, rows: np.ndarray, where: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The (n, 6) float64 sums of field ``name`` at ``rows`` (zeros where absent; ``where``: their
    `compact.positions`)."""
    key = table_name(name)
    pos, hit = where
    out = np.zeros((len(rows), len(SUMS)))
    at = pos[hit]
    for c in range(len(SUMS)):
        out[hit, c] = tensors[compact.aligned_name(key, f"features.{name}.sums.{c}")][at]
    return out


def compact_inputs(
    spec: ModelSpec, formula: Formula, tensors: Mapping[str, np.ndarray], rows: np.ndarray, at_ms: int
) -> np.ndarray:
    """Real-time inputs of (n, 2) user and item ``rows`` at ``at_ms`` from a serving form's features:
    the rows asked for are gathered into a table of their own (plus one row of zeros that the pending
    labels of other rows count into), and `RealtimeFeatures.query` computes them there."""
    user, item = _counted(spec)
    local: list[np.ndarray] = []
    uniques: list[np.ndarray] = []
    for i in range(2):
        unique, inverse = np.unique(rows[:, i], return_inverse=True)
        uniques.append(unique)
        local.append(inverse.reshape(-1).astype(np.int64))
    features = RealtimeFeatures([(user, len(uniques[0]) + 1), (item, len(uniques[1]) + 1)], formula)
    for i, name in enumerate((user, item)):
        key = table_name(name)
        where = compact.positions(tensors[compact.rows_name(key)], uniques[i])
        features.sums[i][:-1] = _gather_sums(tensors, name, uniques[i], where)
        refs = compact.gather(
            tensors, key, f"features.{name}.{LABELS_MS}", uniques[i], np.int64, NO_TIME, where
        )
        features.labels_ms[i][:-1] = refs
    features.sums[2] = np.asarray(tensors[f"features.{GLOBAL}.sums"], np.float64)
    features.labels_ms[2] = np.asarray(tensors[f"features.{GLOBAL}.{LABELS_MS}"], np.int64)
    pending = {
        k: np.asarray(tensors[f"features.{PENDING}.{k}"]) for k in ("rows", "time_ms", "label", "surprise")
    }
    mapped = np.empty_like(pending["rows"])
    for i in range(2):
        pos, hit = compact.positions(uniques[i], pending["rows"][:, i])
        mapped[:, i] = np.where(hit, pos, len(uniques[i]))
    features.pending = {**pending, "rows": mapped}
    return features.query(np.stack(local, axis=1), np.full(len(rows), at_ms, np.int64))


def expand_features(spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``features.*`` arrays of a serving form in the training layout (every row; absent rows
    empty; a dynamic table's present slots taken and admitted, the others free)."""
    out = {
        n: np.array(v)
        for n, v in tensors.items()
        if n.startswith(f"features.{GLOBAL}.") or n.startswith(f"features.{PENDING}.")
    }
    for f in spec.fields:
        key = table_name(f.name)
        present = tensors[compact.rows_name(key)].astype(np.int64)
        if f.table == "dynamic":
            keys = np.zeros(f.rows, np.int64)
            keys[present] = tensors[compact.aligned_name(key, f"features.{f.name}.keys")]
            last_seen = np.full(f.rows, FREE, np.int64)
            last_seen[present[present >= 1]] = 0
            out |= {
                f"features.{f.name}.keys": keys,
                f"features.{f.name}.last_seen_ms": last_seen,
                f"features.{f.name}.pending": np.zeros(f.rows, np.int32),
            }
        if f.name in _counted(spec):
            sums = np.zeros((f.rows, len(SUMS)))
            located = (np.arange(len(present)), np.ones(len(present), bool))  # every row present, in order
            sums[present] = _gather_sums(tensors, f.name, present, located)
            refs = np.full(f.rows, NO_TIME, np.int64)
            refs[present] = tensors[compact.aligned_name(key, f"features.{f.name}.{LABELS_MS}")]
            out |= {f"features.{f.name}.sums": sums, f"features.{f.name}.{LABELS_MS}": refs}
    return out
