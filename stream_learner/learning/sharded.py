"""Id tables sharded by row across the ranks of a job, and the exchange that looks rows up.

Row i of every table of a field lives on rank i mod N, at local index i // N: hashing spreads ids
evenly over rows, so every rank holds 1/N of each table and of the sparse optimiser state that lives
with its rows. The model on each rank is built from the *shard spec* (each field's rows cut to the
rank's share); its dense part is the same on every rank.

A batch on one rank (`Lookup`): the unique rows it needs, per field, go to their owners (an
all-to-all of row ids), which answer with the rows' values (an all-to-all back); the model then runs
on those values as small leaves (``torch.func.functional_call``) and the events' rows renumbered
into them, so backward gives each requested row a gradient, which goes back to its owner through
the reverse all-to-all. The owner adds up what every rank sent for a row (`ShardedTables.collect`)
and applies the sparse optimiser to its shard. Each row id travels as ``row * fields + field``, so
one exchange serves every field; each field has the same tables (``embeddings.<field>``,
``linear.weights.<field>``, ...), so a row's value is the concatenation of its tables' rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from stream_learner.learning.collective import Group
from stream_learner.learning.models.base import RecModel
from stream_learner.scoring.spec import ModelSpec


@dataclass(frozen=True)
class Sharding:
    """Which rows of a table one rank holds: i with i mod world == rank, at local index i // world."""

    rank: int
    world: int

    def rows_of(self, total: int) -> int:
        """How many of a table's ``total`` rows this rank holds."""
        return max(0, (total - self.rank + self.world - 1) // self.world)

    def spec(self, spec: ModelSpec) -> ModelSpec:
        """The model this rank builds: every field's rows cut to this rank's share."""
        return replace(spec, fields=tuple(replace(f, rows=self.rows_of(f.rows)) for f in spec.fields))

    def to_global(self, local: torch.Tensor) -> torch.Tensor:
        return local * self.world + self.rank

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole row-aligned tensor (a contiguous copy)."""
        return tensor[self.rank :: self.world].clone()


def row_table(name: str, shape: tuple[int, ...], rows: Mapping[str, int]) -> str | None:
    """The table a state tensor is row-aligned with, if any: ``model.<table>.weight`` and the sparse
    optimiser's per-row state ``optim.sparse.<table>.weight.<key>`` whose first dimension is the
    table's row count in ``rows`` (table name -> rows: whole tables, or one rank's shards)."""
    for table, count in rows.items():
        weight = f"{table}.weight"
        if name == f"model.{weight}" or (
            name.startswith(f"optim.sparse.{weight}.") and len(shape) > 0 and shape[0] == count
        ):
            return table
    return None


class ShardedTables:
    """This rank's shards of a model's tables, answering other ranks' lookups and gathering the
    gradients they send back."""

    def __init__(self, group: Group, model: RecModel) -> None:
        self.group = group
        self.sharding = Sharding(group.rank, group.world)
        self.tables = model.tables()
        self.fields = len(model.spec.fields)
        of_field = model.table_fields()
        self.by_field = [[n for n, i in of_field.items() if i == f] for f in range(self.fields)]
        self.dims = {n: t.embedding_dim for n, t in self.tables.items()}
        self.width = sum(self.dims[n] for n in self.by_field[0])

    def _split(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Field and local row of each key (keys of rows this rank owns)."""
        return keys % self.fields, torch.div(keys, self.fields, rounding_mode="floor") // self.sharding.world

    @torch.no_grad()
    def read(self, keys: torch.Tensor) -> torch.Tensor:
        """The values of the rows ``keys`` name: (len(keys), width)."""
        field, local = self._split(keys)
        weight = next(iter(self.tables.values())).weight
        out = torch.empty((len(keys), self.width), dtype=weight.dtype, device=weight.device)
        for f, names in enumerate(self.by_field):
            sel = torch.nonzero(field == f).squeeze(1)
            if len(sel):
                out[sel] = torch.cat([self.tables[n].weight[local[sel]] for n in names], dim=1)
        return out

    @torch.no_grad()
    def collect(
        self, keys: torch.Tensor, grads: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per table: the local rows that got gradients (sorted, unique) and their summed gradients
        (what every rank sent for a row, added in a fixed order)."""
        field, local = self._split(keys)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for f, names in enumerate(self.by_field):
            sel = torch.nonzero(field == f).squeeze(1)
            rows, inverse = torch.unique(local[sel], return_inverse=True)
            summed = grads.new_zeros((len(rows), self.width)).index_add_(0, inverse, grads[sel])
            col = 0
            for n in names:
                out[n] = (rows, summed[:, col : col + self.dims[n]])
                col += self.dims[n]
        return out

    def owned_rows(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per table, the sorted unique local rows that ``keys`` (received from any rank) name."""
        field, local = self._split(keys)
        out = {}
        for f, names in enumerate(self.by_field):
            rows = torch.unique(local[field == f])
            out.update(dict.fromkeys(names, rows))
        return out

    def request(self, columns: list[torch.Tensor]) -> Request:
        """Send the (global) rows of each field in ``columns`` to their owners."""
        keys = torch.cat([c * self.fields + f for f, c in enumerate(columns)])
        owner = torch.remainder(torch.div(keys, self.fields, rounding_mode="floor"), self.sharding.world)
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=self.sharding.world).tolist()
        received, got = self.group.exchange(keys[order], counts)
        return Request(order, counts, received, got)


@dataclass(frozen=True)
class Request:
    """Rows sent to their owners: in what order, how many to each, and what this rank received."""

    order: torch.Tensor  # sent = keys[order]
    counts: list[int]  # keys sent to each rank
    received: torch.Tensor  # keys this rank owns that some rank asked for, in rank order
    got: list[int]  # keys received from each rank


class Lookup:
    """The rows one batch needs, fetched from their owners; their gradients sent back.

    ``x`` is the batch's (n, fields) global rows. After construction ``rows`` holds the batch
    renumbered into the fetched values and ``params`` the values as leaves named like the model's
    table weights, for ``functional_call``."""

    def __init__(self, tables: ShardedTables, x: torch.Tensor, grad: bool = True) -> None:
        self.tables = tables
        uniques = [torch.unique(x[:, f], return_inverse=True) for f in range(tables.fields)]
        self.rows = torch.stack([inverse for _, inverse in uniques], dim=1) if len(x) else x
        self.request = tables.request([u for u, _ in uniques])
        answer = tables.group.reply(tables.read(self.request.received), self.request.got, self.request.counts)
        values = torch.empty_like(answer)
        values[self.request.order] = answer
        self.params: dict[str, torch.Tensor] = {}
        lo = 0
        for f, (u, _) in enumerate(uniques):
            col = 0
            for n in tables.by_field[f]:
                dim = tables.dims[n]
                leaf = values[lo : lo + len(u), col : col + dim].clone()
                self.params[f"{n}.weight"] = leaf.requires_grad_(grad)
                col += dim
            lo += len(u)

    def gradients(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """After backward: send each fetched row's gradient to its owner; return, per table of this
        rank's shard, the local rows that got gradients and their sums over all ranks."""
        t = self.tables
        parts = []
        for f in range(t.fields):
            leaves = [self.params[f"{n}.weight"] for n in t.by_field[f]]
            parts.append(
                torch.cat(
                    [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves], 1
                )
            )
        grads = torch.cat(parts) if parts else torch.empty((0, t.width))
        sent = t.group.reply(grads[self.request.order], self.request.counts, self.request.got)
        return t.collect(self.request.received, sent)
