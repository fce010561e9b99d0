"""Delta snapshots: the rows of each id field touched since the previous snapshot, plus every other
tensor whole. Part of the snapshot format (see docs/snapshot-format.md), so it may use torch.

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

from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import torch

from stream_learner.errors import SnapshotError
from stream_learner.learning.models.base import FieldSpec, table_name

ROWS = "delta.rows/"
SLICE = "delta.slice/"
#: Tensors that are lists of a varying length (the real-time features' pending labels): a delta may
#: carry one of another length than the base's.
LISTS = "features.pending."


def _field_of(name: str, shape: tuple[int, ...], tables: Mapping[str, FieldSpec]) -> FieldSpec | None:
    """The id field ``name`` is row-aligned with, if any (``tables``: table key -> its field)."""
    if not shape:
        return None
    dotted = f".{name}."
    best: tuple[int, FieldSpec] | None = None
    for table, f in tables.items():
        if shape[0] != f.rows:
            continue
        if f".{table}." in dotted:
            match = len(table)
        elif name.startswith((f"features.{f.name}.", f"features.{table_name(f.name)}.")):
            match = len(f.name)
        else:
            continue
        if best is None or match > best[0]:
            best = (match, f)
    return best[1] if best else None


def _tables(touched: Mapping[str, torch.Tensor], fields: Sequence[FieldSpec]) -> dict[str, FieldSpec]:
    by_key = {table_name(f.name): f for f in fields}
    out = {}
    for table in touched:
        f = by_key.get(table.rsplit(".", 1)[-1])
        if f is None:
            raise ValueError(f"touched rows of table {table}, which belongs to no field of the model")
        out[table] = f
    return out


def field_rows(touched: Mapping[str, torch.Tensor], fields: Sequence[FieldSpec]) -> dict[str, torch.Tensor]:
    """Per field (by table name), the rows touched in any of its tables (sorted, unique, int64).
    ``touched`` is keyed by table, as `Trainer.take_touched` returns it."""
    parts: dict[str, list[torch.Tensor]] = {table_name(f.name): [] for f in fields}
    for table, f in _tables(touched, fields).items():
        parts[table_name(f.name)].append(touched[table].to("cpu", torch.int64).reshape(-1))
    return {
        key: torch.unique(torch.cat(p)) if p else torch.empty(0, dtype=torch.int64)
        for key, p in parts.items()
    }


def extract(
    tensors: Mapping[str, torch.Tensor],
    touched: Mapping[str, torch.Tensor],
    fields: Sequence[FieldSpec],
    layout: Mapping[str, tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """The delta from the previous snapshot to ``tensors`` (as CPU copies: ``tensors`` may be the live
    state, on any device). ``touched``: rows changed per table since then; ``layout``: name -> shape
    of every tensor the previous snapshot's state has (a row-aligned tensor that is new or changed
    shape travels whole)."""
    rows = field_rows(touched, fields)
    tables = _tables(touched, fields)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, tensor in tensors.items():
        shape = tuple(tensor.shape)
        f = _field_of(name, shape, tables) if layout.get(name) == shape else None
        if f is None:
            out[name] = tensor.to("cpu", copy=True)
            continue
        key = table_name(f.name)
        out[f"{SLICE}{key}/{name}"] = tensor.index_select(0, rows[key].to(tensor.device)).to("cpu")
        used.add(key)
    out.update({f"{ROWS}{key}": rows[key] for key in used})
    return out


def apply(
    base: dict[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    keep: Callable[[str], bool] = lambda name: True,
) -> None:
    """Apply ``delta`` to ``base`` in place (tensors named by ``keep`` only). Everything is checked
    before anything changes: a bad delta raises `SnapshotError` ("bad_delta") and leaves ``base`` as
    it was."""
    rows = {k[len(ROWS) :]: v for k, v in delta.items() if k.startswith(ROWS)}
    for key, index in rows.items():
        if index.dtype != torch.int64 or index.dim() != 1:
            _bad(f"row index {key} is {index.dtype} of shape {tuple(index.shape)}, not a 1-d int64 tensor")
    plan: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []
    for key, value in delta.items():
        if key.startswith(ROWS):
            continue
        idx: torch.Tensor | None = None
        name = key
        if key.startswith(SLICE):
            field_key, _, name = key[len(SLICE) :].partition("/")
            if field_key not in rows:
                _bad(f"{key} has no row index {ROWS}{field_key}")
            idx = rows[field_key]
        if not keep(name):
            continue
        target = base.get(name)
        if idx is not None:
            if target is None:
                _bad(f"{name} is sliced by rows but the base snapshot has no such tensor")
            _check_rows(name, target, idx, value)
        elif target is not None and not _fits(name, target, value):
            _bad(
                f"{name} is {value.dtype}{tuple(value.shape)}, "
                f"the base has {target.dtype}{tuple(target.shape)}"
            )
        plan.append((name, idx, value))
    with torch.no_grad():
        for name, idx, value in plan:
            if name not in base:
                base[name] = value
            elif idx is not None:
                base[name].index_copy_(0, idx.to(base[name].device), value.to(base[name].device))
            elif base[name].shape != value.shape:  # a list that grew or shrank: replaced
                base[name] = value.to(base[name].device, copy=True)
            else:
                base[name].copy_(value)


def _fits(name: str, target: torch.Tensor, value: torch.Tensor) -> bool:
    """A whole tensor replaces its base's when dtype and shape agree, or, for a list (`LISTS`), when
    only its length differs."""
    if value.dtype != target.dtype:
        return False
    if value.shape == target.shape:
        return True
    return name.startswith(LISTS) and value.dim() == target.dim() and value.shape[1:] == target.shape[1:]


def _check_rows(name: str, target: torch.Tensor, idx: torch.Tensor, value: torch.Tensor) -> None:
    if value.dtype != target.dtype or value.shape[1:] != target.shape[1:] or value.shape[0] != len(idx):
        _bad(
            f"rows of {name} are {value.dtype}{tuple(value.shape)} for {len(idx)} rows; "
            f"the base has {target.dtype}{tuple(target.shape)}"
        )
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= target.shape[0]):
        _bad(f"row index of {name} outside [0, {target.shape[0]})")


def _bad(detail: str) -> NoReturn:
    raise SnapshotError("bad_delta", detail)
