"""What one rank of benchmarks/distributed.py measures (run under torchrun by that benchmark)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_learner.config import ModelSettings, TrainSettings
from stream_learner.learning.collective import Group
from stream_learner.learning.models import FieldSpec, ModelSpec
from stream_learner.learning.models.optim import is_row_state
from stream_learner.learning.sharded import Lookup
from stream_learner.learning.sharded_trainer import ShardedTrainer

DEFAULT_ROWS = 1 << 18  # model.user_buckets and item_buckets


def _spec(rows: int) -> ModelSpec:
    """The default model's kind and widths on user and item fields (without count inputs: the id
    tables are what is measured)."""
    m = ModelSettings()
    fields = (FieldSpec("user", rows), FieldSpec("item", rows))
    return ModelSpec(m.kind, fields, m.embedding_dim, tuple(m.hidden), m.dropout)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _window(rows: int, events: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, (events, 2)) - 1, rows - 1)  # skewed like real ids
    return (rng.permutation(rows)[ids]).astype(np.int64), (rng.random(events) < 0.3).astype(np.float32)


def memory(group: Group, rows: int) -> dict[str, Any]:
    before = _rss()
    trainer = ShardedTrainer(_spec(rows), TrainSettings(device="cpu", threads=1), 0.2, group)
    trainer.broadcast_dense()
    trainer.train(*_window(rows, 4096, group.rank), 0.2, seed=0)
    table_bytes = 0
    for table in trainer.tables.values():
        table_bytes += table.weight.numel() * table.weight.element_size()
        for value in trainer.sparse_opt.state.get(table.weight, {}).values():
            if is_row_state(value, table.weight):
                table_bytes += value.numel() * value.element_size()
    return {"rank": group.rank, "rows": rows, "table_bytes": table_bytes, "rss_growth": _rss() - before}


def traffic(group: Group) -> dict[str, Any]:
    """Bytes this rank hands to each kind of collective while training one window (the window's
    two exchanges of the rows it touches and resets count as row ids)."""
    sent: dict[str, float] = {
        "row_ids": 0,
        "rows": 0,
        "row_gradients": 0,
        "dense_all_reduce": 0,
        "control": 0,
    }
    phase = {"now": "rows"}
    exchange, reply, total, gather = Group.exchange, Group.reply, Group.sum, Group.gather_ints
    gradients = Lookup.gradients

    def counted_exchange(self: Group, send: torch.Tensor, counts: Any) -> Any:
        before, phase["now"] = phase["now"], "ids"  # its own reply carries the ids
        try:
            return exchange(self, send, counts)
        finally:
            phase["now"] = before

    def counted_reply(self: Group, send: torch.Tensor, counts: list[int], expect: list[int]) -> Any:
        kind = {"ids": "row_ids", "grads": "row_gradients"}.get(phase["now"], "rows")
        sent[kind] += send.numel() * send.element_size()
        return reply(self, send, counts, expect)

    def counted_sum(self: Group, tensor: torch.Tensor) -> Any:
        sent["dense_all_reduce"] += tensor.numel() * tensor.element_size()
        return total(self, tensor)

    def counted_gather(self: Group, values: Any) -> Any:
        sent["control"] += 8 * len(values)
        return gather(self, values)

    def counted_gradients(self: Lookup) -> Any:
        phase["now"] = "grads"
        try:
            return gradients(self)
        finally:
            phase["now"] = "rows"

    Group.exchange, Group.reply, Group.sum, Group.gather_ints = (  # type: ignore[method-assign]
        counted_exchange, counted_reply, counted_sum, counted_gather,
    )  # fmt: skip
    Lookup.gradients = counted_gradients  # type: ignore[method-assign]
    settings = TrainSettings(device="cpu", threads=1, batch_size=1024)
    trainer = ShardedTrainer(_spec(DEFAULT_ROWS), settings, 0.2, group)
    events = 1 << 16
    mine = _window(DEFAULT_ROWS, events // group.world, 10 + group.rank)
    for key in sent:
        sent[key] = 0
    result = trainer.train(*mine, 0.2, seed=1)
    Group.exchange, Group.reply, Group.sum, Group.gather_ints = exchange, reply, total, gather  # type: ignore[method-assign]
    Lookup.gradients = gradients  # type: ignore[method-assign]
    steps = result.steps
    assert steps == math.ceil(events / settings.batch_size), steps
    return {
        "rank": group.rank,
        "steps": steps,
        "bytes_per_step": {k: round(v / steps, 1) for k, v in sent.items()},
        "dense_parameters": sum(p.numel() for p in trainer.dense_params.values()),
    }


def run(task: list[str], out: Path) -> None:
    torch.set_num_threads(1)
    group = Group.join("cpu", 600)
    try:
        report = memory(group, int(task[1])) if task[0] == "memory" else traffic(group)
    finally:
        group.leave()
    (out / f"{group.rank}.json").write_text(json.dumps(report))
