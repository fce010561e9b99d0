"""The spec that describes a model: its kind, its id fields and their tables, its sizes.

It travels as JSON in every snapshot; the learner builds its torch model from it
(`stream_learner.learning.models`), and serving its numpy one (`stream_learner.scoring.model`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TableKind = Literal["hash", "dynamic"]


@dataclass(frozen=True)
class FieldSpec:
    name: str  # "user", "item" or "ctx.<name>"
    rows: int
    table: TableKind = "hash"  # how ids map to rows (see `stream_learner.learning.features`)


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

    @property
    def count_inputs(self) -> int:
        """Width of the real-time inputs the model takes (0: none)."""
        return int(self.extra.get("count_inputs", 0))


def table_name(field_name: str) -> str:
    """Module-safe name of a field's table (dots are not allowed in module names)."""
    return field_name.replace(".", "_")
