"""Copies of the model state for snapshots: every ``full_every``-th whole, the others as deltas.

`StateCopier` runs on the training thread, right after the window a snapshot includes and before the
next one: a full copy clones every tensor; a delta slices only the rows touched since the previous
copy (`extract`, in the layout of `stream_learner.snapshots.delta`), so that the training thread
never stops long for a large model. It remembers the layout (the shape of every tensor) of the state
the next delta applies to. The copies are handed on as numpy arrays (views of the CPU copies, no
further copy): the snapshot format knows no torch.

With ``delta_first`` a full copy that has a base to continue is cut as a delta as well: the delta is
published first, and reaches subscribers in milliseconds, and the whole state right after it as a
snapshot of its own (it adds no window), whose encoding, commit and load take a second or more for a
large model (docs/decisions/delta-before-full.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from stream_learner.learning.trainer import Trainer
from stream_learner.scoring.spec import FieldSpec, ModelSpec, table_name
from stream_learner.snapshots.delta import ROWS, SLICE
from stream_learner.snapshots.format import SnapshotKind


@dataclass(frozen=True)
class StateCopy:
    """The model state after a window: tensors for the payload (all of them for a full snapshot, the
    delta from the previous copy otherwise), learner state for resume."""

    tensors: dict[str, np.ndarray]
    learner_state: dict[str, Any]
    kind: SnapshotKind = "FULL"
    full: dict[str, np.ndarray] | None = None  # with a delta: the whole state, published after it
    companion: StateCopy | None = None  # a student's state after the same window (`snapshots.companion`)


class Copied(Protocol):
    """What a copy is taken of: a `Learner`, or a student beside one (`learning.student.Student`)."""

    spec: ModelSpec
    trainer: Trainer

    def tensors(self, copy: bool = True) -> dict[str, torch.Tensor]: ...

    def state(self) -> dict[str, Any]: ...


@dataclass
class StateCopier:
    learner: Copied
    full_every: int = 1
    #: Deltas since the last full copy; None when the next copy must be full.
    since_full: int | None = None
    #: The shape of every tensor of the state the next delta applies to.
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: A full copy that has a base is also cut as the delta from it (`StateCopy.full` holds the whole).
    delta_first: bool = False

    def copy(self) -> StateCopy:
        """The state now (call it on the training thread): whole, or as the delta from the previous
        copy, or both (``delta_first``)."""
        touched = self.learner.trainer.take_touched()
        since = self.since_full
        full = since is None or since + 1 >= self.full_every
        tensors = self.learner.tensors(copy=full)  # a delta copies only what it takes
        cut = since is not None and (not full or self.delta_first)
        copied = extract(tensors, touched, self.learner.spec.fields, self.layout) if cut else tensors
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        self.layout = shapes if full else {**self.layout, **shapes}
        self.since_full = 0 if full or since is None else since + 1
        state = self.learner.state()
        if cut:
            return StateCopy(arrays(copied), state, "DELTA", full=arrays(tensors) if full else None)
        return StateCopy(arrays(copied), state, "FULL")


def arrays(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """CPU tensors as numpy arrays sharing their memory."""
    return {name: tensor.detach().numpy() for name, tensor in tensors.items()}


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
