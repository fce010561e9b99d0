"""Logistic regression over the id fields: one weight per id (a 1-wide table per field) plus a bias."""

from __future__ import annotations

import torch
from torch import nn

from stream_learner.learning.models.base import RecModel
from stream_learner.scoring.spec import ModelSpec


class Logistic(RecModel):
    def __init__(self, spec: ModelSpec, sparse: bool = True) -> None:
        super().__init__(spec, 1, sparse, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def forward(self, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(rows).sum(dim=(1, 2)) + self.bias + self.count_logit(inputs)
