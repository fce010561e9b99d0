"""Delta snapshots: the rows of each id field touched since the previous snapshot, plus every other
tensor whole (see docs/snapshot-format.md). Applying them is numpy; cutting them from the learner's
live state is `stream_learner.snapshots.state`'s.

A tensor is *row-aligned* with an id field when it is indexed by that field's table rows: the field's
tables (``model.<table>.weight`` for every key of ``RecModel.tables()``, e.g. ``embeddings.<field>``),
their sparse optimiser state (``optim.sparse.<table>.weight.<state>``), and ``features.<field>.*``
tensors; in each case the first dimension is the field's row count. A delta carries, per field, the
touched row indices as ``delta.rows/<field>`` and each row-aligned tensor's rows as
``delta.slice/<field>/<name>``; every other tensor (dense weights, their optimiser state, scalar step
counters, the real-time features' global row and pending labels) travels whole, of the same shape as
the base's except the pending labels (`LISTS`), a list whose length changes. Applying the deltas of a
chain in order to the full snapshot they follow gives exactly the state they were cut from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NoReturn

import numpy as np

from stream_learner.errors import SnapshotError

ROWS = "delta.rows/"
SLICE = "delta.slice/"
#: Tensors that are lists of a varying length (the real-time features' pending labels): a delta may
#: carry one of another length than the base's.
LISTS = "features.pending."


def placeholder(array: np.ndarray) -> np.ndarray:
    """An array of ``array``'s dtype and shape that holds no memory (zero broadcast, read-only): what
    a state keeps of a tensor it does not need, so that deltas are checked against it all the same."""
    return np.broadcast_to(np.zeros((), array.dtype), array.shape)


def apply(
    base: dict[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
    keep: Callable[[str], bool] = lambda name: True,
) -> None:
    """Apply ``delta`` to ``base`` in place. Everything is checked before anything changes: a bad
    delta raises `SnapshotError` ("bad_delta") and leaves ``base`` as it was. A tensor of the same
    shape is written into the base's array (whoever shares it sees the change); a list that grew
    or shrank, and a tensor the base lacks, are replaced by (added as) the delta's own array. Only
    tensors named by ``keep`` are written; the others stay (or become) a `placeholder`."""
    rows = {k[len(ROWS) :]: v for k, v in delta.items() if k.startswith(ROWS)}
    for key, index in rows.items():
        if index.dtype != np.int64 or index.ndim != 1:
            _bad(f"row index {key} is {index.dtype} of shape {tuple(index.shape)}, not a 1-d int64 tensor")
    plan: list[tuple[str, np.ndarray | None, np.ndarray]] = []
    for key, value in delta.items():
        if key.startswith(ROWS):
            continue
        idx: np.ndarray | None = None
        name = key
        if key.startswith(SLICE):
            field_key, _, name = key[len(SLICE) :].partition("/")
            if field_key not in rows:
                _bad(f"{key} has no row index {ROWS}{field_key}")
            idx = rows[field_key]
        target = base.get(name)
        if idx is not None:
            if target is None:
                _bad(f"{name} is sliced by rows but the base snapshot has no such tensor")
            _check_rows(name, target, idx, value)
        elif target is not None and not _fits(name, target, value):
            theirs = f"{target.dtype}{tuple(target.shape)}"
            _bad(f"{name} is {value.dtype}{tuple(value.shape)}, the base has {theirs}")
        plan.append((name, idx, value))
    for name, idx, value in plan:
        if not keep(name):
            base[name] = placeholder(value if idx is None else base[name])
        elif name not in base or (idx is None and base[name].shape != value.shape):
            base[name] = value  # new, or a list that grew or shrank: replaced
        elif idx is not None:
            base[name][idx] = value
        else:
            base[name][...] = value


def _fits(name: str, target: np.ndarray, value: np.ndarray) -> bool:
    """A whole tensor replaces its base's when dtype and shape agree, or, for a list (`LISTS`), when
    only its length differs."""
    if value.dtype != target.dtype:
        return False
    if value.shape == target.shape:
        return True
    return name.startswith(LISTS) and value.ndim == target.ndim and value.shape[1:] == target.shape[1:]


def _check_rows(name: str, target: np.ndarray, idx: np.ndarray, value: np.ndarray) -> None:
    if value.dtype != target.dtype or value.shape[1:] != target.shape[1:] or value.shape[0] != len(idx):
        _bad(
            f"rows of {name} are {value.dtype}{tuple(value.shape)} for {len(idx)} rows; "
            f"the base has {target.dtype}{tuple(target.shape)}"
        )
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= target.shape[0]):
        _bad(f"row index of {name} outside [0, {target.shape[0]})")


def _bad(detail: str) -> NoReturn:
    raise SnapshotError("bad_delta", detail)
