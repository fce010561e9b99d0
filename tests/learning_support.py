"""Helpers for the learning tests: small settings and windows of synthetic events."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import Window
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

CONTEXT = ("device", "section")


def small_settings(**sections: dict[str, Any]) -> Settings:
    """A small model (tables of a few hundred rows) on the CPU; sections override."""
    base: dict[str, dict[str, Any]] = {
        "model": {
            "kind": "dnn",
            "embedding_dim": 4,
            "hidden": [8],
            "user_buckets": 512,
            "item_buckets": 256,
            "context_fields": list(CONTEXT),
            "context_buckets": 16,
        },
        "train": {"device": "cpu", "batch_size": 256},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return Settings.model_validate(base)


def windows(
    count: int, size: int = 1_000, seed: int = 0, context: tuple[str, ...] = CONTEXT, **config: Any
) -> Iterator[Window]:
    """``count`` windows of ``size`` synthetic events (300 users, 60 items), 1 ms apart, with the
    ``context`` fields."""
    stream = SyntheticStream(SyntheticConfig(users=300, items=60, seed=seed, **config))
    for w in range(count):
        batch = stream.batch(size, w * size, 1)
        yield Window(
            w * size,
            (w + 1) * size,
            batch.events(context, w * size),
            {0: (w * size, (w + 1) * size - 1)},
            "count",
        )


def empty_window(start_ms: int = 0) -> Window:
    return Window(start_ms, start_ms + 1000, EventBatch.empty(len(CONTEXT)), {}, "count")


def assert_same_tensors(
    a: Mapping[str, torch.Tensor | np.ndarray], b: Mapping[str, torch.Tensor | np.ndarray]
) -> None:
    """The same names, dtypes and values (torch tensors, or numpy arrays as snapshots hold them)."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = torch.as_tensor(a[name]), torch.as_tensor(b[name])
        assert x.dtype == y.dtype, name
        assert torch.equal(x, y), name
