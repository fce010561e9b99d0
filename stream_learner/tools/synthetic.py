"""Synthetic user-behaviour events from a hidden preference model, with drift at known times.

An event's true click probability is ``sigmoid(bias + user_bias + item_bias + context_bias
+ scale * sqrt(dim) * <u, v>)``: per-user and per-item propensities (learnable from a few sightings),
a latent taste match (learnable from many), and one bias per value of each context field. Items are
shown with a Zipf popularity skew and users are active with another. Labels are drawn from the true
probability, so there is something real to learn and the AUC of the true probabilities is the best
any model can reach.

Drift: at a known event index the latent vectors and biases of the drift's target (users, items or
context values) are redrawn, for all of them or a fraction. An abrupt drift switches at once; a
gradual one over ``span`` events, each event following the new taste with a probability that grows
linearly (its true probability is the mixture).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from stream_learner.ingest.events import MISSING_KEY, EventBatch, hash_id

POSITIVE_TYPES = np.array(["click", "add_to_cart", "purchase"])
POSITIVE_WEIGHTS = np.array([0.75, 0.17, 0.08])
NEGATIVE_TYPES = np.array(["impression", "view"])
NEGATIVE_WEIGHTS = np.array([0.7, 0.3])


@dataclass(frozen=True)
class Drift:
    """A change of hidden preferences starting at event index ``at``: the latent vectors and biases of
    a fraction of the users (their tastes) or of the items (what is in fashion), or the effect of a
    fraction of the context values (say, a redesigned page section), are redrawn."""

    at: int
    kind: Literal["abrupt", "gradual"] = "abrupt"
    span: int = 0  # events over which a gradual drift completes
    target: Literal["users", "items", "context"] = "items"
    fraction: float = 1.0  # share of the target (users, items or context values) that changes

    def weight(self, index: np.ndarray) -> np.ndarray:
        """Probability that an event at ``index`` follows the new taste."""
        if self.kind == "abrupt" or self.span <= 0:
            return (index >= self.at).astype(np.float64)
        return np.clip((index - self.at) / self.span, 0.0, 1.0)


@dataclass(frozen=True)
class _Regime:
    user_vectors: np.ndarray
    user_bias: np.ndarray
    item_vectors: np.ndarray
    item_bias: np.ndarray
    context_bias: dict[str, np.ndarray]


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 5_000
    items: int = 1_000
    dim: int = 3
    zipf: float = 1.1  # item popularity skew (how often each item is shown)
    user_zipf: float = 0.8  # user activity skew
    bias: float = -1.2
    scale: float = 1.2  # weight of the latent taste match
    user_bias: float = 0.6  # std of the per-user propensity
    item_bias: float = 0.6  # std of the per-item appeal
    context: tuple[tuple[str, int], ...] = (("device", 3), ("section", 8))  # (field, distinct values)
    context_bias: float = 0.4  # std of the per-value bias of a context field
    drifts: tuple[Drift, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class SyntheticBatch:
    user_id: np.ndarray  # object (str)
    item_id: np.ndarray  # object (str)
    event_type: np.ndarray  # object (str)
    timestamp_ms: np.ndarray  # int64
    label: np.ndarray  # float32, drawn
    probability: np.ndarray  # float64, the truth
    context: dict[str, np.ndarray]  # field -> object (str) values
    keys: dict[str, np.ndarray]  # "user", "item" and each context field -> int64 keys (`hash_id`)

    def __len__(self) -> int:
        return len(self.label)

    def events(self, context_fields: tuple[str, ...] | list[str] = (), first_offset: int = 0) -> EventBatch:
        """The batch as decoded events (what the codec makes of `records`), on partition 0."""
        n = len(self)
        context = np.full((n, len(context_fields)), MISSING_KEY, np.int64)
        for i, name in enumerate(context_fields):
            if name in self.keys:
                context[:, i] = self.keys[name]
        return EventBatch(
            user=self.keys["user"],
            item=self.keys["item"],
            context=context,
            label=self.label,
            timestamp_ms=self.timestamp_ms,
            partition=np.zeros(n, np.int32),
            offset=first_offset + np.arange(n, dtype=np.int64),
            item_ids=self.item_id,
        )

    def records(self) -> list[dict[str, object]]:
        """Records in the `UserEvent` schema (label left null: it follows from the event type)."""
        names = list(self.context)
        if names:
            contexts = [dict(zip(names, v, strict=True)) for v in zip(*self.context.values(), strict=True)]
        else:
            contexts = [{} for _ in range(len(self))]
        return [
            {"user_id": u, "item_id": i, "event_type": e, "timestamp": int(t), "label": None, "context": ctx}
            for u, i, e, t, ctx in zip(
                self.user_id, self.item_id, self.event_type, self.timestamp_ms, contexts, strict=True
            )
        ]


def _hashed(names: np.ndarray) -> np.ndarray:
    return np.array([hash_id(n) for n in names], dtype=np.int64)


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


class SyntheticStream:
    """Deterministic for a given config: the same seed gives the same events, in the same order."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = c = config or SyntheticConfig()
        rng = np.random.default_rng(c.seed)
        self._rng = rng
        self.item_popularity = _zipf_weights(c.items, c.zipf)
        self.user_activity = rng.permutation(_zipf_weights(c.users, c.user_zipf))
        # The hidden preferences of each regime: the initial one, then one per drift.
        self.regimes = [self._regime(rng, None, None)]
        for drift in c.drifts:
            self.regimes.append(self._regime(rng, self.regimes[-1], drift))
        self.produced = 0  # events generated so far: the index of the next event
        self._user_names = np.array([f"u{i}" for i in range(c.users)], dtype=object)
        self._item_names = np.array([f"i{i}" for i in range(c.items)], dtype=object)
        self._context_names = {
            name: np.array([f"{name}{v}" for v in range(n)], dtype=object) for name, n in c.context
        }
        self._keys = {
            "user": _hashed(self._user_names),
            "item": _hashed(self._item_names),
            **{name: _hashed(names) for name, names in self._context_names.items()},
        }

    def _regime(self, rng: np.random.Generator, base: _Regime | None, drift: Drift | None) -> _Regime:
        """Fresh preferences, or ``base`` with those of a fraction of the drift's target redrawn."""
        c = self.config
        fresh = _Regime(
            rng.normal(0, 1 / np.sqrt(c.dim), (c.users, c.dim)),
            rng.normal(0, c.user_bias, c.users),
            rng.normal(0, 1 / np.sqrt(c.dim), (c.items, c.dim)),
            rng.normal(0, c.item_bias, c.items),
            {name: rng.normal(0, c.context_bias, n) for name, n in c.context},
        )
        if base is None or drift is None:
            return fresh

        def mix(old: np.ndarray, new: np.ndarray) -> np.ndarray:
            keep = rng.random(len(old)) >= drift.fraction
            return np.where(keep.reshape(-1, *[1] * (old.ndim - 1)), old, new)

        if drift.target == "users":
            return replace(
                base,
                user_vectors=mix(base.user_vectors, fresh.user_vectors),
                user_bias=mix(base.user_bias, fresh.user_bias),
            )
        if drift.target == "items":
            return replace(
                base,
                item_vectors=mix(base.item_vectors, fresh.item_vectors),
                item_bias=mix(base.item_bias, fresh.item_bias),
            )
        return replace(
            base, context_bias={n: mix(v, fresh.context_bias[n]) for n, v in base.context_bias.items()}
        )

    def _probability(
        self, regime: _Regime, users: np.ndarray, items: np.ndarray, context: dict[str, np.ndarray]
    ) -> np.ndarray:
        c = self.config
        affinity = np.einsum("nd,nd->n", regime.user_vectors[users], regime.item_vectors[items])
        logit = (
            c.bias + regime.user_bias[users] + regime.item_bias[items] + c.scale * np.sqrt(c.dim) * affinity
        )
        for name, values in context.items():
            logit += regime.context_bias[name][values]
        return 1 / (1 + np.exp(-logit))

    def probability(
        self, users: np.ndarray, items: np.ndarray, index: np.ndarray, context: dict[str, np.ndarray]
    ) -> np.ndarray:
        """True click probability of events (by user, item, event index and context value indices)."""
        prob = self._probability(self.regimes[0], users, items, context)
        for drift, regime in zip(self.config.drifts, self.regimes[1:], strict=True):
            w = drift.weight(index)
            if w.any():
                prob = (1 - w) * prob + w * self._probability(regime, users, items, context)
        return prob

    def batch(self, n: int, start_ms: int, step_ms: float) -> SyntheticBatch:
        """The next ``n`` events, with event times ``start_ms + i * step_ms``."""
        rng, c = self._rng, self.config
        users = rng.choice(c.users, n, p=self.user_activity)
        items = rng.choice(c.items, n, p=self.item_popularity)
        context = {name: rng.integers(0, k, n) for name, k in c.context}
        index = self.produced + np.arange(n)
        self.produced += n
        prob = self.probability(users, items, index, context)
        label = (rng.random(n) < prob).astype(np.float32)
        kinds = np.where(
            label > 0,
            rng.choice(POSITIVE_TYPES, n, p=POSITIVE_WEIGHTS),
            rng.choice(NEGATIVE_TYPES, n, p=NEGATIVE_WEIGHTS),
        ).astype(object)
        times = (start_ms + np.arange(n) * step_ms).astype(np.int64)
        named = {name: self._context_names[name][v] for name, v in context.items()}
        keys = {
            "user": self._keys["user"][users],
            "item": self._keys["item"][items],
            **{name: self._keys[name][v] for name, v in context.items()},
        }
        return SyntheticBatch(
            self._user_names[users], self._item_names[items], kinds, times, label, prob, named, keys
        )
