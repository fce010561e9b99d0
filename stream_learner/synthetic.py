"""Synthetic user-behaviour events from a hidden latent-factor preference model.

Users and items have latent vectors; items have a Zipf popularity skew both in how often they are
shown and in a bias term. An event's true click probability is
``sigmoid(bias + scale * <u, v> + item_bias)`` and its label is drawn from it, so there is something
real to learn and the AUC of the true probabilities is the best any model can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITIVE_TYPES = np.array(["click", "add_to_cart", "purchase"])
POSITIVE_WEIGHTS = np.array([0.75, 0.17, 0.08])
NEGATIVE_TYPES = np.array(["impression", "view"])
NEGATIVE_WEIGHTS = np.array([0.7, 0.3])


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 5_000
    items: int = 1_000
    dim: int = 8
    zipf: float = 1.1
    bias: float = -1.0
    scale: float = 1.5
    seed: int = 0


@dataclass(frozen=True)
class SyntheticBatch:
    user_id: np.ndarray  # object (str)
    item_id: np.ndarray  # object (str)
    event_type: np.ndarray  # object (str)
    timestamp_ms: np.ndarray  # int64
    label: np.ndarray  # float32, drawn
    probability: np.ndarray  # float64, the truth

    def __len__(self) -> int:
        return len(self.label)

    def records(self) -> list[dict[str, object]]:
        """Records in the `UserEvent` schema (label left null: it follows from the event type)."""
        return [
            {"user_id": u, "item_id": i, "event_type": e, "timestamp": int(t), "label": None, "context": {}}
            for u, i, e, t in zip(self.user_id, self.item_id, self.event_type, self.timestamp_ms, strict=True)
        ]


class SyntheticStream:
    """Deterministic for a given config: the same seed gives the same events."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config = config or SyntheticConfig()
        self._rng = np.random.default_rng(config.seed)
        c = config
        self.user_vectors = self._rng.normal(0, 1 / np.sqrt(c.dim), (c.users, c.dim))
        self.item_vectors = self._rng.normal(0, 1 / np.sqrt(c.dim), (c.items, c.dim))
        ranks = np.arange(1, c.items + 1)
        popularity = ranks**-c.zipf
        self.item_popularity = popularity / popularity.sum()
        self.item_bias = 0.5 * np.log(popularity / popularity.mean()) / np.log(c.items)
        self._user_names = np.array([f"u{i}" for i in range(c.users)], dtype=object)
        self._item_names = np.array([f"i{i}" for i in range(c.items)], dtype=object)

    def probability(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        c = self.config
        affinity = np.einsum("nd,nd->n", self.user_vectors[users], self.item_vectors[items])
        return 1 / (1 + np.exp(-(c.bias + c.scale * affinity * np.sqrt(c.dim) + self.item_bias[items])))

    def batch(self, n: int, start_ms: int, step_ms: float) -> SyntheticBatch:
        """``n`` events with event times ``start_ms + i * step_ms``."""
        rng = self._rng
        users = rng.integers(0, self.config.users, n)
        items = rng.choice(self.config.items, n, p=self.item_popularity)
        prob = self.probability(users, items)
        label = (rng.random(n) < prob).astype(np.float32)
        kinds = np.where(
            label > 0,
            rng.choice(POSITIVE_TYPES, n, p=POSITIVE_WEIGHTS),
            rng.choice(NEGATIVE_TYPES, n, p=NEGATIVE_WEIGHTS),
        ).astype(object)
        times = (start_ms + np.arange(n) * step_ms).astype(np.int64)
        return SyntheticBatch(self._user_names[users], self._item_names[items], kinds, times, label, prob)
