"""Training one window on every rank of a job at once: dense weights replicated, id tables sharded.

`ShardedTrainer` is the `Trainer` of one rank. Its model is built from the shard spec
(`stream_learner.learning.sharded`): the tables hold this rank's rows, the dense weights are the
same everywhere (rank 0's, `broadcast_dense`, once the model is restored or new). All ranks call
`score`, `evaluate` and `train` for the same window in the same order, each with its own events
(possibly none), and every call is collective:

- the window's size is summed over the ranks, and the mini-batch is the *global* one that a single
  process would take for a window of that size (`mini_batch_size`: within ``train.min_batch_size``
  and ``train.batch_size``, ``train.window_steps`` per window in between), so a window takes the
  same number of steps on every rank as in one process, each rank giving each step an even share of
  its own events (a rank with fewer events gives smaller shares, down to none, and still takes part
  in every step);
- each step looks rows up from their owners, runs forward and backward with the loss summed over the
  rank's share and divided by the step's global size (so the gradients summed over ranks are those of
  the mean loss of the whole mini-batch), sends row gradients back to their owners and all-reduces the
  dense gradients together with the owners' squared gradient norms, which gives every rank the same
  global norm for clipping; the owners then scale the row gradients by the step's global size (they
  are per-event sums, as in one process: `PER_EVENT_TABLE_GRADIENTS`); then dense Adam on every
  rank (identical inputs, identical weights) and the sparse optimiser on each shard. Each shard's
  optimiser steps at every step, with an empty gradient when no row of it was used, so step counts
  agree across ranks;
- at the start of a window the rows it will touch (and the rows to reset, `fresh`) go to their
  owners, which copy them for the rollback and reset the fresh ones; a non-finite loss or gradient on
  any rank rolls the window back on every rank;
- `score` gives every rank the window's global log loss, count, variance of one event's loss and
  (binned) AUC (`stream_learner.learning.quality_sums`), so the learning-rate controller and the
  guard decide the same everywhere;
- the real-time features (`stream_learner.learning.realtime`) are not sharded: every rank holds them
  whole; before a window is scored every rank's events of it (their counted rows, times and labels)
  are gathered on every rank in rank order (`whole_stream`), so every rank computes the inputs of
  the whole window as of each event, as one process that saw all the events would, takes its own
  (`own`) and folds the whole window into its state.

Randomness is per rank and derived from the window's seed (the order of a rank's events, dropout,
fresh rows), so the same windows give the same model on the CPU in deterministic mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from stream_learner.config import TrainSettings
from stream_learner.learning import quality_sums
from stream_learner.learning import trainer as local
from stream_learner.learning.collective import Group
from stream_learner.learning.models import ModelSpec, build_model
from stream_learner.learning.models.optim import scale_second_moments
from stream_learner.learning.realtime import Stream
from stream_learner.learning.sharded import Lookup, ShardedTables, Sharding, row_table
from stream_learner.learning.trainer import EVAL_CHUNK, Evaluation, StepResult, Trainer, _Rollback

#: Spreads the seeds of the ranks' shards apart.
_SHARD_SEED = 1_000_003
_NO_ROWS = np.empty(0, np.int64)


def step_shares(sizes: np.ndarray, steps: int) -> np.ndarray:
    """(ranks, steps): how many of each rank's events (``sizes``) go to each step. Every rank spreads
    its events evenly; the steps that take one event more rotate from rank to rank, so that every
    step has floor or ceil of (all events / steps) events, at least one."""
    before = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    extra = (np.arange(steps)[None, :] - before[:, None]) % steps < (sizes % steps)[:, None]
    return (sizes // steps)[:, None] + extra


class ShardedTrainer(Trainer):
    """One rank's trainer of a model whose tables are sharded by row over the job."""

    def __init__(self, spec: ModelSpec, settings: TrainSettings, lr: float, group: Group) -> None:
        self.group = group
        self.sharding = Sharding(group.rank, group.world)
        super().__init__(build_model(self.sharding.spec(spec), sparse=False), settings, lr)
        self.full_rows = {name: spec.fields[i].rows for name, i in self.table_field.items()}
        self.shards = ShardedTables(group, self.model)
        self._forget: float | None = None
        self._initialise(settings.seed)

    @torch.no_grad()
    def _initialise(self, seed: int) -> None:
        """Every shard its own initial rows (from a generator of its own, not the global one)."""
        for i, (name, table) in enumerate(self.tables.items()):
            generator = torch.Generator().manual_seed(
                (seed * _SHARD_SEED + i) * self.group.world + self.group.rank
            )
            table.weight.copy_(self.model.initial_rows(name, table.weight.shape[0], generator))

    @torch.no_grad()
    def broadcast_dense(self) -> None:
        """Rank 0's dense weights on every rank (collective): a new model's dense layers are drawn
        after tables whose sizes differ between ranks, so they differ until this is called."""
        for param in self.dense_params.values():
            self.group.broadcast(param.data)

    def _local_seed(self, seed: int) -> int:
        return (seed * self.group.world + self.group.rank) % (1 << 63)

    # -- scoring -------------------------------------------------------------------------------
    def _forward_rows(self, lookup: Lookup, inputs: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return functional_call(self.model, lookup.params, (lookup.rows, inputs)).float()

    @torch.no_grad()
    def predict(self, rows: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for this rank's (n, fields) rows and their count inputs (collective: every
        rank calls it)."""
        self.model.eval()
        chunks = int(self.group.gather_ints([math.ceil(len(rows) / EVAL_CHUNK)]).max())
        out = []
        for c in range(chunks):
            part = slice(c * EVAL_CHUNK, (c + 1) * EVAL_CHUNK)
            x = self._to_device(rows[part])
            d = None if inputs is None else self._to_device(inputs[part])
            out.append(torch.sigmoid(self._forward_rows(Lookup(self.shards, x, grad=False), d)).cpu().numpy())
        return np.concatenate(out) if out else np.empty(0, np.float32)

    def score(
        self, rows: np.ndarray, labels: np.ndarray, inputs: np.ndarray | None = None
    ) -> tuple[Evaluation, np.ndarray]:
        """The window's log loss, AUC, count and loss variance over every rank, and this rank's
        probabilities."""
        probs = self.predict(rows, inputs)
        total = torch.from_numpy(quality_sums.parts(labels, probs)).to(self.device)
        loss, auc, count, variance = quality_sums.quality(self.group.sum(total).cpu().numpy())
        return Evaluation(loss, auc, count, variance), probs

    # -- training ------------------------------------------------------------------------------
    def forget(self, rows: np.ndarray, factor: float) -> Callable[[], None]:
        """Forgetting after a drift, on the rows the next window touches on any rank: applied by
        `train` once the owners know them (and undone by its rollback)."""
        self._forget = factor
        return lambda: None

    def train(
        self,
        rows: np.ndarray,
        labels: np.ndarray,
        lr: float,
        seed: int,
        fresh: dict[int, np.ndarray] | None = None,
        inputs: np.ndarray | None = None,
    ) -> StepResult:
        """Train every rank's share of one window (collective; see the module's docstring)."""
        started = time.perf_counter()
        forget, self._forget = self._forget, None
        sizes = self.group.gather_ints([len(labels)])[:, 0]
        n = int(sizes.sum())
        if n == 0:
            return StepResult(True, math.nan, 0, 0.0)
        self.set_lr(lr)
        x_all = self._to_device(rows)
        y_all = self._to_device(labels.astype(np.float32))
        d_all = None if inputs is None else self._to_device(inputs)
        touched, resets = self._window_rows(x_all, fresh or {})
        rollback = _Rollback(self, touched)
        generator = torch.Generator().manual_seed(self._local_seed(seed))
        self._reset_rows(resets, generator)
        if forget is not None:
            for name, table in self.tables.items():
                scale_second_moments(self.sparse_opt, table.weight, touched[name], forget)
        torch.manual_seed(self._local_seed(seed))  # dropout
        s = self.settings
        steps_per_pass = math.ceil(
            n / local.mini_batch_size(n, s.min_batch_size, s.batch_size, s.window_steps)
        )
        shares = step_shares(sizes, steps_per_pass)
        global_sizes = shares.sum(axis=0)
        mine = np.concatenate(([0], np.cumsum(shares[self.group.rank])))
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = 0
        self.model.train()
        for _ in range(self.settings.passes):
            order = torch.randperm(len(labels), generator=generator).to(self.device)
            for j in range(steps_per_pass):
                idx = order[mine[j] : mine[j + 1]]
                d = None if d_all is None else d_all[idx]
                loss, norm = self._global_step(x_all[idx], y_all[idx], d, int(global_sizes[j]), lr)
                finite &= torch.isfinite(loss) & torch.isfinite(norm)
                total += loss.double()
                steps += 1
        agg = self.group.sum(torch.stack((total, (~finite).double())))
        mean_loss = float(agg[0].item()) / (n * self.settings.passes)
        if agg[1].item() > 0:
            rollback.restore(self)
            return StepResult(False, mean_loss, steps, time.perf_counter() - started, "non_finite")
        for name, owned in touched.items():
            self._touched[name].append(owned.cpu())
        return StepResult(True, mean_loss, steps, time.perf_counter() - started)

    def whole_stream(self, stream: Stream) -> Stream:
        """Every rank's events of the window as the real-time features see them, joined in rank
        order (collective), so that every rank computes the same inputs and state; `own` then takes
        this rank's part of the inputs."""
        parts = [_unpack(flat) for flat in self.group.gather_all(_pack(stream))]
        sizes = np.array([len(p) for p in parts])
        self._own = slice(int(sizes[: self.group.rank].sum()), int(sizes[: self.group.rank + 1].sum()))
        return Stream.concat(parts)

    def own(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[self._own]

    def mark_touched(self, field: int, rows: np.ndarray) -> None:
        """Count a field's rows as changed (global row numbers): this shard's own among them."""
        mine = rows[rows % self.group.world == self.group.rank]
        super().mark_touched(field, (mine - self.group.rank) // self.group.world)

    def _window_rows(
        self, x: torch.Tensor, fresh: dict[int, np.ndarray]
    ) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
        """Per table, the local rows of this shard that the window touches on any rank; per field,
        the local rows of this shard to reset (given to new ids or drifted on any rank)."""
        fields = self.shards.fields
        fresh_t = {i: self._to_device(np.asarray(fresh.get(i, []), dtype=np.int64)) for i in range(fields)}
        used = [torch.unique(torch.cat((x[:, f], fresh_t[f]))) for f in range(fields)]
        touched = self.shards.owned_rows(self.shards.request(used).received)
        resets = self.shards.owned_rows(self.shards.request([fresh_t[f] for f in range(fields)]).received)
        return touched, {i: resets[names[0]] for i, names in enumerate(self.shards.by_field)}

    def _global_step(
        self, x: torch.Tensor, y: torch.Tensor, inputs: torch.Tensor | None, size: int, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the global mini-batch of ``size`` events, this rank's share being (x, y) and
        its count ``inputs``. Returns this rank's summed loss and the global gradient norm (before
        clipping)."""
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        lookup = Lookup(self.shards, x)
        logits = self._forward_rows(lookup, inputs)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        (loss / size).backward()
        grads = lookup.gradients()
        dense = list(self.dense_params.values())
        table_sq = sum((v.pow(2).sum() for _, v in grads.values()), torch.zeros((), device=self.device))
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in dense]
            + [table_sq.reshape(1)]
        )
        self.group.sum(flat)
        norm = (flat[:-1].pow(2).sum() + flat[-1]).sqrt()
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
        lo = 0
        for p in dense:
            p.grad = (flat[lo : lo + p.numel()] * coef).view_as(p)
            lo += p.numel()
        scale = coef * size if local.PER_EVENT_TABLE_GRADIENTS else coef  # per-event sums, as one process
        for name, (rows, values) in grads.items():
            weight = self.tables[name].weight
            weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values * scale, weight.shape)
        self.sparse_opt.step()
        self.dense_opt.step()
        if self.settings.weight_decay > 0:
            self._decay_rows({name: rows for name, (rows, _) in grads.items()}, lr)
        return loss.detach(), norm

    # -- state ---------------------------------------------------------------------------------
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], optimizer: bool = True) -> None:
        """Load a whole (unsharded) state: this rank takes its rows of every row-aligned tensor."""
        own = {}
        for name, tensor in tensors.items():
            table = row_table(name, tuple(tensor.shape), self.full_rows)
            own[name] = self.sharding.shard(tensor) if table is not None else tensor
        super().load_state_tensors(own, optimizer)


def _pack(stream: Stream) -> np.ndarray:
    """A stream as one int64 array: (events, fields), the rows, the times, the labels (float64 bits)."""
    events, counted = stream.rows.shape
    return np.concatenate(
        [
            np.array([events, counted], np.int64),
            stream.rows.ravel(),
            stream.time_ms,
            stream.label.view(np.int64),
        ]
    )


def _unpack(flat: np.ndarray) -> Stream:
    """Inverse of `_pack`."""
    events, counted = int(flat[0]), int(flat[1])
    rows, times, labels = np.split(flat[2:], np.cumsum([events * counted, events]))
    return Stream(rows.reshape(events, counted), times, labels.view(np.float64))
