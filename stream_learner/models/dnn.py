"""The paper's network: embeddings of every id field, then an MLP with dropout, with a DeepFM-style
factorization-machine term on the same embeddings added to the logit (Guo et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from stream_learner.models.base import ModelSpec, RecModel
from stream_learner.models.fm import FirstOrder, fm_interaction


class DeepFM(RecModel):
    def __init__(self, spec: ModelSpec, sparse: bool = True) -> None:
        super().__init__(spec, spec.embedding_dim, sparse)
        self.linear = FirstOrder(spec, sparse)
        layers: list[nn.Module] = []
        width = len(spec.fields) * spec.embedding_dim
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def tables(self) -> dict[str, nn.Embedding]:
        tables = super().tables()
        tables.update({f"linear.weights.{n}": t for n, t in self.linear.weights.items()})
        return tables

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        vectors = self.embed(rows)
        deep = self.mlp(vectors.flatten(1)).squeeze(1)
        return deep + self.linear(rows) + fm_interaction(vectors)
