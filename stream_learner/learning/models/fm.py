"""Factorization machine over the id fields (Rendle 2010): bias, per-id weights, pairwise factors."""

from __future__ import annotations

import torch
from torch import nn

from stream_learner.learning.models.base import ModelSpec, RecModel

#: Standard deviation of the initial factors: large enough that pairwise terms learn from the start,
#: small enough that their random products (std 0.03^2 x sqrt(dim) per pair) do not add noise to every
#: prediction (0.1 cost 0.002 AUC on MovieLens and 0.001-0.003 of steady-state AUC on the synthetic
#: stream; docs/decisions/fm-default-model.md).
FACTOR_INIT_STD = 0.03


def fm_interaction(vectors: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise dot products of (n, fields, dim) vectors, in O(fields * dim)."""
    square_of_sum = vectors.sum(dim=1).pow(2)
    sum_of_square = vectors.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class FirstOrder(nn.Module):
    """Holds the per-id scalar weights (``linear.weights.<field>``)."""

    def __init__(self, weights: nn.ModuleDict) -> None:
        super().__init__()
        self.weights = weights


class FM(RecModel):
    def __init__(self, spec: ModelSpec, sparse: bool = True) -> None:
        super().__init__(spec, spec.embedding_dim, sparse, init_std=FACTOR_INIT_STD)
        self.linear = FirstOrder(self._add_tables("linear.weights", 1, sparse))
        self.bias = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def first_order(self, rows: torch.Tensor) -> torch.Tensor:
        weights = [t(rows[:, i]) for i, t in enumerate(self.linear.weights.values())]
        return torch.stack(weights, dim=1).sum(dim=(1, 2))

    def forward(self, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        return (
            self.bias + self.first_order(rows) + fm_interaction(self.embed(rows)) + self.count_logit(inputs)
        )
