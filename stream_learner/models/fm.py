"""Factorization machine over the id fields (Rendle 2010): bias, per-id weights, pairwise factors."""

from __future__ import annotations

import torch
from torch import nn

from stream_learner.models.base import ModelSpec, RecModel, table_name


def fm_interaction(vectors: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise dot products of (n, fields, dim) vectors, in O(fields * dim)."""
    square_of_sum = vectors.sum(dim=1).pow(2)
    sum_of_square = vectors.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class FirstOrder(nn.Module):
    """Per-id scalar weights for each field."""

    def __init__(self, spec: ModelSpec, sparse: bool) -> None:
        super().__init__()
        self.weights = nn.ModuleDict(
            {table_name(f.name): nn.Embedding(f.rows, 1, sparse=sparse) for f in spec.fields}
        )
        for table in self.weights.values():
            nn.init.zeros_(table.weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return sum(t(rows[:, i]).squeeze(1) for i, t in enumerate(self.weights.values()))  # type: ignore[return-value]


class FM(RecModel):
    def __init__(self, spec: ModelSpec, sparse: bool = True) -> None:
        super().__init__(spec, spec.embedding_dim, sparse)
        self.linear = FirstOrder(spec, sparse)
        self.bias = nn.Parameter(torch.zeros(1))

    def tables(self) -> dict[str, nn.Embedding]:
        tables = super().tables()
        tables.update({f"linear.weights.{n}": t for n, t in self.linear.weights.items()})
        return tables

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.bias + self.linear(rows) + fm_interaction(self.embed(rows))
