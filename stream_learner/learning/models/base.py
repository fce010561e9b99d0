"""The contract every model follows (its spec, `stream_learner.scoring.spec`, describes one).

A model maps a LongTensor of table rows, one column per field, to one logit per event. Its id fields
live in embedding tables (`tables()`), which are the sparse part of the model: optimised with sparse
updates, shipped as touched rows in delta snapshots, re-initialised row by row when a dynamic table
gives a row to a new id, and initialisable from pretrained weights. Everything else is dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stream_learner.scoring.spec import ModelSpec, table_name


@dataclass(frozen=True)
class Gradients:
    """A mini-batch's mean loss and, per table (``embeddings.<field>``, ...), the rows it used
    (sorted, unique) and the gradient of each of those rows."""

    loss: torch.Tensor
    tables: dict[str, tuple[torch.Tensor, torch.Tensor]]


class RecModel(nn.Module):
    """Base class: one embedding table per field (``embeddings.<field>``) plus a model-specific head.

    Subclasses with more per-field tables register them in `_extra_tables` (name prefix -> tables)."""

    def __init__(self, spec: ModelSpec, dim: int, sparse: bool, init_std: float) -> None:
        super().__init__()
        self.spec = spec
        self.init_std = init_std
        self.embeddings = nn.ModuleDict(
            {table_name(f.name): nn.Embedding(f.rows, dim, sparse=sparse) for f in spec.fields}
        )
        self._extra_tables: dict[str, nn.ModuleDict] = {}
        width = spec.count_inputs
        self.count_head = nn.Linear(width, 1, bias=False) if width else None
        if self.count_head is not None:
            with torch.no_grad():  # the learner sets its first weights (stream_learner.learning.realtime)
                self.count_head.weight.zero_()

    def _add_tables(self, prefix: str, dim: int, sparse: bool) -> nn.ModuleDict:
        """Another table per field, registered as ``<prefix>.<field>``; initialised to zeros. The
        caller assigns it to the attribute path ``prefix`` names."""
        tables = nn.ModuleDict(
            {table_name(f.name): nn.Embedding(f.rows, dim, sparse=sparse) for f in self.spec.fields}
        )
        self._extra_tables[prefix] = tables
        return tables

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every table (dense layers initialise themselves when built)."""
        for name, table in self.tables().items():
            table.weight.copy_(self.initial_rows(name, table.weight.shape[0]))

    def initial_rows(self, name: str, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fresh initial values for ``count`` rows of table ``name`` (on the CPU): small random
        factors for ``embeddings.*`` (zeros when the model's ``init_std`` is 0), zeros elsewhere."""
        dim = self.tables()[name].embedding_dim
        if name.startswith("embeddings.") and self.init_std > 0:
            return torch.randn((count, dim), generator=generator) * self.init_std
        return torch.zeros((count, dim))

    def tables(self) -> dict[str, nn.Embedding]:
        """Every per-field table, keyed by parameter-name prefix (``embeddings.<field>``, ...)."""
        out = {f"embeddings.{n}": t for n, t in self.embeddings.items()}
        for prefix, tables in self._extra_tables.items():
            out.update({f"{prefix}.{n}": t for n, t in tables.items()})
        return out  # type: ignore[return-value]

    def table_fields(self) -> dict[str, int]:
        """Index of the field (the column of the rows) each table belongs to."""
        index = {table_name(f.name): i for i, f in enumerate(self.spec.fields)}
        return {name: index[name.rsplit(".", 1)[-1]] for name in self.tables()}

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, fields) rows -> (n, fields, dim) vectors."""
        return torch.stack([table(rows[:, i]) for i, table in enumerate(self.embeddings.values())], dim=1)

    def count_logit(self, inputs: torch.Tensor | None) -> torch.Tensor | float:
        """The part of the logit from the count inputs (0 for a model without them)."""
        if self.count_head is None:
            return 0.0
        if inputs is None:
            raise ValueError("the model takes count inputs (model.count_features) and none were given")
        return self.count_head(inputs).squeeze(1)

    def closed_form(
        self, rows: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> Gradients | None:
        """The mean log loss of a mini-batch and its gradients worked out by hand, for a model that
        can (None: the trainer uses autograd). Sets ``.grad`` of the dense parameters."""
        return None

    def forward(
        self, rows: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
