"""The paper's network: embeddings of every id field, then an MLP with dropout, with a DeepFM-style
factorization-machine term on the same embeddings added to the logit (Guo et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from stream_learner.learning.models.base import Gradients
from stream_learner.learning.models.fm import FM, fm_interaction
from stream_learner.scoring.spec import ModelSpec


class DeepFM(FM):
    def __init__(self, spec: ModelSpec, sparse: bool = True) -> None:
        super().__init__(spec, sparse)
        layers: list[nn.Module] = []
        width = len(spec.fields) * spec.embedding_dim
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        vectors = self.embed(rows)
        deep = self.mlp(vectors.flatten(1)).squeeze(1)
        return self.bias + self.first_order(rows) + fm_interaction(vectors) + deep + self.count_logit(inputs)

    def closed_form(
        self, rows: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> Gradients | None:
        """None: the network's gradients come from autograd."""
        return None
