"""The contract every model follows, and the spec that describes one.

A model maps a LongTensor of table rows, one column per field, to one logit per event. Its id fields
live in embedding tables (`tables()`), which are the sparse part of the model: optimised with sparse
updates, shipped as touched rows in delta snapshots, and initialisable from pretrained weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class FieldSpec:
    name: str  # "user", "item" or "ctx.<name>"
    rows: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's shape; travels as JSON in snapshots."""

    kind: str
    fields: tuple[FieldSpec, ...]
    embedding_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ModelSpec:
        data = json.loads(text)
        return ModelSpec(
            kind=data["kind"],
            fields=tuple(FieldSpec(**f) for f in data["fields"]),
            embedding_dim=int(data["embedding_dim"]),
            hidden=tuple(int(h) for h in data["hidden"]),
            dropout=float(data["dropout"]),
            extra=dict(data.get("extra", {})),
        )


def table_name(field_name: str) -> str:
    """Module-safe name of a field's table (dots are not allowed in module names)."""
    return field_name.replace(".", "_")


class RecModel(nn.Module):
    """Base class: per-field embedding tables plus a model-specific head."""

    def __init__(self, spec: ModelSpec, dim: int, sparse: bool) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = nn.ModuleDict(
            {table_name(f.name): nn.Embedding(f.rows, dim, sparse=sparse) for f in spec.fields}
        )
        for table in self.embeddings.values():
            nn.init.normal_(table.weight, std=0.01)

    def tables(self) -> dict[str, nn.Embedding]:
        """The embedding tables, keyed by parameter-name prefix (``embeddings.<field>``)."""
        return {f"embeddings.{name}": table for name, table in self.embeddings.items()}

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, fields) rows -> (n, fields, dim) vectors."""
        return torch.stack([table(rows[:, i]) for i, table in enumerate(self.embeddings.values())], dim=1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
