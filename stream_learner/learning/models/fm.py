"""Factorization machine over the id fields (Rendle 2010): bias, per-id weights, pairwise factors."""

from __future__ import annotations

import torch
from torch import nn

from stream_learner.learning.models.base import Gradients, RecModel
from stream_learner.scoring.spec import ModelSpec

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

    @torch.no_grad()
    def closed_form(
        self, rows: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> Gradients | None:
        """`forward` and the gradients of its mean log loss by hand: with d = (sigmoid(logit) - y) / n
        per event, an id's weight gets d, its factors d x (sum of the event's factors - its own), the
        bias sum(d), the count head d @ inputs. Each table's gradient comes out per unique row, so
        nothing is coalesced: 226 tensor operations for a mini-batch of 625 events against autograd's
        588 (docs/decisions/closed-form-fm.md)."""
        tables = self.tables()
        vectors, first, used = [], [], []
        for f, name in enumerate(self.embeddings):
            rows_used, inverse = torch.unique(rows[:, f], return_inverse=True)
            factors = tables[f"embeddings.{name}"].weight.index_select(0, rows_used)
            weights = tables[f"linear.weights.{name}"].weight.index_select(0, rows_used)
            vectors.append(factors.index_select(0, inverse))
            first.append(weights.index_select(0, inverse))
            used.append((name, rows_used, inverse, factors, weights))
        stacked = torch.stack(vectors, dim=1)  # (n, fields, dim)
        total = stacked.sum(dim=1)
        interaction = 0.5 * (total.pow(2) - stacked.pow(2).sum(dim=1)).sum(dim=1)
        logits = self.bias + torch.cat(first, dim=1).sum(dim=1) + interaction + self.count_logit(inputs)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        d = (torch.sigmoid(logits) - labels) / len(labels)
        factor_grads = d[:, None, None] * (total[:, None, :] - stacked)
        weight_grads = d[:, None]
        grads = {}
        for f, (name, rows_used, inverse, factors, weights) in enumerate(used):
            grads[f"embeddings.{name}"] = (
                rows_used,
                torch.zeros_like(factors).index_add_(0, inverse, factor_grads[:, f]),
            )
            grads[f"linear.weights.{name}"] = (
                rows_used,
                torch.zeros_like(weights).index_add_(0, inverse, weight_grads),
            )
        self.bias.grad = d.sum().reshape(1)
        if self.count_head is not None and inputs is not None:
            self.count_head.weight.grad = (d @ inputs).reshape(self.count_head.weight.shape)
        return Gradients(loss, grads)
