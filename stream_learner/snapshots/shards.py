"""Snapshots of a model sharded over the ranks of a job, in the layout of a single process.

Every rank copies its part of the state after the same window (`ShardCopier`, on its training
thread); the parts travel to rank 0 as bytes (`encode_part` / `decode_part`: a JSON header and a
safetensors payload, never a pickle), and rank 0 joins them (`assemble`) into exactly what a single
process with the whole model would have published: a full snapshot's tensors whole, a delta's row
slices under the whole table's row numbers (docs/snapshot-format.md). Serving, tools and the
restart therefore read a sharded model's snapshots like any other, and a snapshot restores into a
job of any number of ranks (each takes its rows, `ShardedTrainer.load_state_tensors`).

A part holds, under these names:

- ``whole/<name>``: a tensor that is not row-aligned (dense weights, their optimiser state, step
  counts), the same on every rank: only rank 0 sends them;
- ``shard/<name>``: the rank's rows of a row-aligned tensor, whole (rows r, r + N, ...): in a full
  snapshot, and in a delta for a tensor the previous snapshot did not have in that shape;
- ``rows/<field>`` and ``part/<field>/<name>``: in a delta, the rows of the field's tables that the
  rank changed since the previous snapshot (global row numbers) and those rows of each row-aligned
  tensor of the field.

The real-time features' per-id sums (``features.<field>.<sum>``, `stream_learner.learning.realtime`)
are row-aligned with their field but not sharded: every rank holds them whole, the same everywhere
(`ShardedTrainer.whole_stream`). Each rank still sends only its rows of them, as of a table (whole
rows r, r + N, ... or the rows it changed), so they travel and join like the tables, and the rows a
delta carries are those the window changed on any rank, as in one process: the rows trained, reset
or counted (`ShardedTrainer.mark_touched`). The global row and the pending labels are not
row-aligned: rank 0 sends them whole.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from stream_learner.learning.realtime import RealtimeFeatures
from stream_learner.learning.sharded import row_table
from stream_learner.learning.sharded_trainer import ShardedTrainer
from stream_learner.scoring.spec import table_name
from stream_learner.snapshots import delta
from stream_learner.snapshots.format import SnapshotKind
from stream_learner.snapshots.state import arrays

WHOLE, SHARD, ROWS, PART = "whole/", "shard/", "rows/", "part/"
_HEADER = struct.Struct("<Q")


@dataclass
class ShardCopier:
    """Copies one rank's part of the state, whole every ``full_every``-th time, else as a delta."""

    trainer: ShardedTrainer
    full_every: int = 1
    #: Deltas since the last full copy; None when the next copy must be full.
    since_full: int | None = None
    #: The (whole-model) shape of every tensor of the state the next delta applies to.
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: The real-time features, whole on every rank (None for a model without them).
    realtime: RealtimeFeatures | None = None
    #: A full copy that has a base is also cut as the delta from it (as `StateCopier.delta_first`).
    delta_first: bool = False

    def copy(self) -> tuple[SnapshotKind, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """This rank's part of the state now (call it on the training thread, on every rank after
        the same window): the kind of snapshot, the part's tensors (CPU copies), and with a delta cut
        where a full copy was due (``delta_first``), the whole part too."""
        t = self.trainer
        touched = t.take_touched()
        since = self.since_full
        full = since is None or since + 1 >= self.full_every
        cut = since is not None and (not full or self.delta_first)
        shard_rows = {name: table.weight.shape[0] for name, table in t.tables.items()}
        field_of = {name: table_name(t.model.spec.fields[i].name) for name, i in t.table_field.items()}
        rows = {field_of[name]: local for name, local in touched.items()}  # a field's tables share rows
        out: dict[str, torch.Tensor] = {}  # the part of the delta when cut, else the whole part
        whole: dict[str, torch.Tensor] = {}  # the whole part beside a delta (a full copy was due)
        shapes: dict[str, tuple[int, ...]] = {}
        for name, tensor in t.state_tensors(copy=False).items():
            table = row_table(name, tuple(tensor.shape), shard_rows)
            if table is None:
                shapes[name] = tuple(tensor.shape)
                if t.group.rank == 0:
                    out[WHOLE + name] = tensor.detach().to("cpu", copy=True)
                continue
            shapes[name] = (t.full_rows[table], *tensor.shape[1:])
            if full:
                whole[SHARD + name] = tensor.detach().to("cpu", copy=True)
            if not cut or self.layout.get(name) != shapes[name]:
                out[SHARD + name] = whole[SHARD + name] if full else tensor.detach().to("cpu", copy=True)
                continue
            key = field_of[table]
            index = rows[key].to(tensor.device)
            out[f"{PART}{key}/{name}"] = tensor.detach().index_select(0, index).to("cpu")
            out[ROWS + key] = t.sharding.to_global(rows[key].to("cpu", torch.int64))
        features = self.realtime.state() if self.realtime is not None else {}
        fields = set(self.realtime.names) if self.realtime is not None else set()
        for name, array in features.items():  # whole on every rank: each sends its rows
            owner = name.removeprefix("features.").rpartition(".")[0]
            if owner not in fields:  # the global row and the pending labels: not row-aligned
                shapes[name] = array.shape
                if t.group.rank == 0:
                    out[WHOLE + name] = torch.from_numpy(array.copy())
                continue
            key = table_name(owner)
            shapes[name] = array.shape
            if full:
                whole[SHARD + name] = t.sharding.shard(torch.from_numpy(array))
            if not cut or self.layout.get(name) != shapes[name]:
                out[SHARD + name] = whole[SHARD + name] if full else t.sharding.shard(torch.from_numpy(array))
                continue
            changed = t.sharding.to_global(rows[key].to("cpu", torch.int64))
            out[f"{PART}{key}/{name}"] = torch.from_numpy(array[changed.numpy()])
            out[ROWS + key] = changed
        self.layout = shapes if full else {**self.layout, **shapes}
        self.since_full = 0 if full or since is None else since + 1
        if not cut:
            return "FULL", out, None
        whole.update({n: v for n, v in out.items() if n.startswith(WHOLE)})
        return "DELTA", out, whole if full else None


def encode_part(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> bytes:
    """A rank's part as bytes: the length of a JSON header, the header (``info``), safetensors."""
    header = json.dumps(info).encode()
    return _HEADER.pack(len(header)) + header + st_save({k: v.contiguous() for k, v in tensors.items()})


def decode_part(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of `encode_part`."""
    (length,) = _HEADER.unpack_from(data)
    info = json.loads(data[_HEADER.size : _HEADER.size + length])
    return st_load(data[_HEADER.size + length :]), info


def assemble(kind: SnapshotKind, parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Join every rank's part (in rank order) into the state (full) or delta a single process with
    the whole model would have cut (numpy arrays, as `StateCopy` hands them on)."""
    world = len(parts)
    out = {name[len(WHOLE) :]: t for name, t in parts[0].items() if name.startswith(WHOLE)}
    for name in [n[len(SHARD) :] for n in parts[0] if n.startswith(SHARD)]:
        shards = [p[SHARD + name] for p in parts]
        whole = shards[0].new_empty((sum(len(s) for s in shards), *shards[0].shape[1:]))
        for r, s in enumerate(shards):
            whole[r::world] = s
        out[name] = whole
    if kind == "FULL":
        return arrays(out)
    for key in [n[len(ROWS) :] for n in parts[0] if n.startswith(ROWS)]:
        rows = torch.cat([p[ROWS + key] for p in parts])
        order = torch.argsort(rows)
        out[delta.ROWS + key] = rows[order]
        prefix = f"{PART}{key}/"
        for name in [n[len(prefix) :] for n in parts[0] if n.startswith(prefix)]:
            values = torch.cat([p[prefix + name] for p in parts])
            out[f"{delta.SLICE}{key}/{name}"] = values[order]
    return arrays(out)
