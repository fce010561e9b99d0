"""Scoring and training one window on the chosen device.

The trainer takes numpy rows and labels and does all the torch work: the device and its copies
(pinned host memory and non-blocking copies on CUDA), bf16 autocast, mini-batches and passes, the
two optimisers (a sparse one for the embedding tables, Adam for dense weights), weight decay,
gradient clipping, the reset of table rows given to new ids, and the guard that rolls a window back
entirely when any of its losses or gradients is not finite.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stream_learner.config import TrainSettings
from stream_learner.errors import ConfigError
from stream_learner.learning.cpus import cpu_threads
from stream_learner.learning.guard import SkipReason
from stream_learner.learning.models.base import RecModel
from stream_learner.learning.models.optim import (
    SparseAdagrad,
    is_row_state,
    restore_rows,
    scale_second_moments,
    sparse_optimizer,
)
from stream_learner.learning.quality import log_loss, log_loss_variance, roc_auc
from stream_learner.learning.realtime import Stream

EVAL_CHUNK = 1 << 16
#: Table gradients are per-event sums (see `mini_batch_size`); False gives the mean loss's gradient
#: as before (kept for the real-data benchmark's ablation, benchmarks/real.py).
PER_EVENT_TABLE_GRADIENTS = True

torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, said out loud (silences a warning)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is present, else the CPU; ``cuda[:N]`` without such a GPU is a
    `ConfigError` naming train.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device", f"{name!r}, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("train.device", f"{name!r}, but only {torch.cuda.device_count()} GPUs exist")
    return device


@dataclass(frozen=True)
class Evaluation:
    """Quality of the model on some events: log loss, AUC, how many events, and the variance of one
    event's log loss about the mean."""

    loss: float
    auc: float
    count: int
    variance: float = 0.0


@dataclass(frozen=True)
class StepResult:
    """What training on a window did. ``applied`` is False when the guard rolled it back."""

    applied: bool
    loss: float
    steps: int
    seconds: float
    reason: SkipReason | None = None


def _copy(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _state_value(value: torch.Tensor, param: torch.Tensor) -> object:
    """A saved optimiser state entry as the optimiser keeps it: row state on the parameter's device,
    step counts on the CPU (an int64 scalar was a Python int, as SparseAdam keeps its step)."""
    if value.dim() == 0:
        return int(value) if value.dtype == torch.int64 else value.clone()
    return value.to(param.device)


class _Rollback:
    """A copy of everything a window's training can change: the rows it touches in every table and
    in their optimiser state, the dense weights and the dense optimiser's state."""

    def __init__(self, trainer: Trainer, touched: dict[str, torch.Tensor]) -> None:
        self.touched = touched
        self._rows: dict[str, tuple[torch.Tensor, dict[str, object]]] = {}
        for name, table in trainer.tables.items():
            rows = touched[name]
            state = trainer.sparse_opt.state.get(table.weight, {})
            saved = {
                k: v[rows].clone() if is_row_state(v, table.weight) else _copy(v) for k, v in state.items()
            }
            self._rows[name] = (table.weight.detach()[rows].clone(), saved)
        self._dense = {n: p.detach().clone() for n, p in trainer.dense_params.items()}
        self._dense_opt = copy.deepcopy(trainer.dense_opt.state_dict())

    @torch.no_grad()
    def restore(self, trainer: Trainer) -> None:
        for name, (weights, saved) in self._rows.items():
            table, rows = trainer.tables[name], self.touched[name]
            table.weight[rows] = weights
            if not saved:  # the optimiser had no state for this table before the window
                trainer.sparse_opt.state.pop(table.weight, None)
                continue
            state = trainer.sparse_opt.state[table.weight]
            for k, v in saved.items():
                if is_row_state(state[k], table.weight):
                    state[k][rows] = v
                else:
                    state[k] = v
        for n, p in trainer.dense_params.items():
            p.copy_(self._dense[n])
        trainer.dense_opt.load_state_dict(self._dense_opt)


def mini_batch_size(events: int, smallest: int, largest: int, steps: int) -> int:
    """The mini-batch size for a window of ``events``: the window split into ``steps`` mini-batches,
    but none smaller than ``smallest`` nor larger than ``largest``. Small windows so still take several
    sequential steps (an online learner takes one per event), large ones keep large mini-batches
    (throughput), and in between a window takes ``steps`` steps whatever its size.

    Mini-batches so differ in size (and the last one of a window is smaller anyway), so the table
    gradients are per-event sums, not means (`Trainer._step` scales them by the mini-batch size
    after clipping): an id's gradient then depends on its own events, not on how many others share
    its mini-batch, and Adagrad's accumulators add like those of per-event updates. The dense
    weights keep the mean (Adam does not depend on the scale)."""
    return max(1, min(largest, max(smallest, -(-events // steps))))


class Trainer:
    """Evaluates and trains a `RecModel` window by window."""

    def __init__(self, model: RecModel, settings: TrainSettings, lr: float) -> None:
        self.settings = settings
        torch.set_num_threads(cpu_threads(settings.threads))
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device)
        self.tables = model.tables()
        self.table_field = model.table_fields()
        table_params = {id(t.weight) for t in self.tables.values()}
        self.dense_params = {n: p for n, p in model.named_parameters() if id(p) not in table_params}
        self._params = list(model.parameters())
        self._make_optimizers(lr)
        cuda = self.device.type == "cuda"
        self.autocast = settings.precision == "bf16" or (settings.precision == "auto" and cuda)
        self._pin = cuda
        self._touched: dict[str, list[torch.Tensor]] = {name: [] for name in self.tables}
        #: Mini-batches are this many times the size `mini_batch_size` gives, each weighted as that
        #: many ordinary mini-batches (so an event moves the weights as much as in an ordinary one;
        #: see `_step`); set between windows, by catch-up.
        self.batch_multiplier = 1
        if settings.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _make_optimizers(self, lr: float) -> None:
        """Fresh optimisers (no state) at rate ``lr``."""
        s = self.settings
        self.sparse_opt = sparse_optimizer(s.sparse_optimizer, [t.weight for t in self.tables.values()], lr)
        self.dense_opt = torch.optim.Adam(  # fused: one kernel for every dense tensor (half the time)
            list(self.dense_params.values()),
            lr=lr * s.dense_lr_ratio,
            weight_decay=s.weight_decay,
            fused=True,
        )

    # -- data movement -------------------------------------------------------------------------
    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor; on CUDA through pinned memory with a non-blocking copy."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _forward(self, x: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(x, inputs).float()

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, rows: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for (n, fields) rows (and their (n, k) count inputs, for a model with them)."""
        self.model.eval()
        out = [
            torch.sigmoid(
                self._forward(
                    self._to_device(rows[lo : lo + EVAL_CHUNK]),
                    None if inputs is None else self._to_device(inputs[lo : lo + EVAL_CHUNK]),
                )
            )
            .cpu()
            .numpy()
            for lo in range(0, len(rows), EVAL_CHUNK)
        ]
        return np.concatenate(out) if out else np.empty(0, np.float32)

    def evaluate(self, rows: np.ndarray, labels: np.ndarray, inputs: np.ndarray | None = None) -> Evaluation:
        return self.score(rows, labels, inputs)[0]

    def score(
        self, rows: np.ndarray, labels: np.ndarray, inputs: np.ndarray | None = None
    ) -> tuple[Evaluation, np.ndarray]:
        """`evaluate`, and the probability of each event (from which per-event losses follow)."""
        probs = self.predict(rows, inputs)
        evaluation = Evaluation(
            log_loss(labels, probs), roc_auc(labels, probs), len(labels), log_loss_variance(labels, probs)
        )
        return evaluation, probs

    # -- training ------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.sparse_opt.param_groups:
            group["lr"] = lr
        for group in self.dense_opt.param_groups:
            group["lr"] = lr * self.settings.dense_lr_ratio

    def train(
        self,
        rows: np.ndarray,
        labels: np.ndarray,
        lr: float,
        seed: int,
        fresh: dict[int, np.ndarray] | None = None,
        inputs: np.ndarray | None = None,
    ) -> StepResult:
        """Train on one window: first reset the ``fresh`` rows (field index -> rows given to new ids)
        to initial values with no optimiser state, then run the passes in mini-batches of
        `mini_batch_size`. Roll everything back if any loss or gradient is not finite. ``inputs``: the
        events' count inputs, for a model with them."""
        started = time.perf_counter()
        n = len(labels)
        if n == 0:
            return StepResult(True, math.nan, 0, 0.0)
        self.set_lr(lr)
        x_all = self._to_device(rows)
        y_all = self._to_device(labels.astype(np.float32))
        d_all = None if inputs is None else self._to_device(inputs)
        fresh_t = {i: self._to_device(r.astype(np.int64)) for i, r in (fresh or {}).items()}
        per_field = {  # all tables of a field are touched on the same rows: one unique per field
            i: torch.unique(x_all[:, i] if i not in fresh_t else torch.cat((x_all[:, i], fresh_t[i])))
            for i in set(self.table_field.values())
        }
        touched = {name: per_field[i] for name, i in self.table_field.items()}
        rollback = _Rollback(self, touched)
        generator = torch.Generator().manual_seed(seed)
        self._reset_rows(fresh_t, generator)
        torch.manual_seed(seed)  # dropout
        self.model.train()
        s = self.settings
        size = mini_batch_size(n, s.min_batch_size, s.batch_size, s.window_steps) * self.batch_multiplier
        losses, norms = [], []  # checked and summed once per window: no per-step synchronisation
        for _ in range(s.passes):
            order = torch.randperm(n, generator=generator).to(self.device)
            x, y = x_all[order], y_all[order]
            d = None if d_all is None else d_all[order]
            for lo in range(0, n, size):
                part = slice(lo, lo + size)
                loss, norm = self._step(x[part], y[part], lr, None if d is None else d[part])
                losses.append(loss)
                norms.append(norm)
        steps = len(losses)
        sizes = torch.tensor([min(size, n - lo) for lo in range(0, n, size)] * s.passes, dtype=torch.float64)
        mean_loss = float((torch.stack(losses).double().cpu() * sizes).sum()) / (n * s.passes)
        if not bool(torch.isfinite(torch.stack(losses + norms)).all()):
            rollback.restore(self)
            return StepResult(False, mean_loss, steps, time.perf_counter() - started, "non_finite")
        on_host = {i: rows_touched.cpu() for i, rows_touched in per_field.items()}
        for name, i in self.table_field.items():
            self._touched[name].append(on_host[i])
        return StepResult(True, mean_loss, steps, time.perf_counter() - started)

    def forget(self, rows: np.ndarray, factor: float) -> Callable[[], None]:
        """Scale the table optimiser's second moments of the rows in ``rows`` ((n, fields), the rows
        a window trains) by ``factor``; return what undoes it (for a window that is rolled back)."""
        done = []
        for name, table in self.tables.items():
            used = np.unique(rows[:, self.table_field[name]])
            index = torch.from_numpy(used).to(table.weight.device)
            done.append(
                (table.weight, index, scale_second_moments(self.sparse_opt, table.weight, index, factor))
            )

        def undo() -> None:
            for weight, index, saved in done:
                restore_rows(self.sparse_opt, weight, index, saved)

        return undo

    def whole_stream(self, stream: Stream) -> Stream:
        """The whole window as the real-time features see it, given this process's events of it: the
        same, for a trainer that sees every event of its windows."""
        return stream

    def own(self, inputs: np.ndarray) -> np.ndarray:
        """This process's part of the whole window's inputs (`whole_stream`): all of them."""
        return inputs

    def mark_touched(self, field: int, rows: np.ndarray) -> None:
        """Count rows of a field as changed (e.g. id-table slots that expired) for the next delta."""
        for name in self.tables:
            if self.table_field[name] == field:
                self._touched[name].append(torch.from_numpy(rows.astype(np.int64)))

    def take_touched(self) -> dict[str, torch.Tensor]:
        """Rows of each table changed since the last call (sorted, unique, on the CPU), for delta
        snapshots. All tables of one field are touched on the same rows."""
        out = {}
        for name, parts in self._touched.items():
            out[name] = torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.long)
            parts.clear()
        return out

    @torch.no_grad()
    def _reset_rows(self, fresh: dict[int, torch.Tensor], generator: torch.Generator) -> None:
        for name, table in self.tables.items():
            rows = fresh.get(self.table_field[name])
            if rows is None or len(rows) == 0:
                continue
            table.weight[rows] = self.model.initial_rows(name, len(rows), generator).to(table.weight)
            for value in self.sparse_opt.state.get(table.weight, {}).values():
                if is_row_state(value, table.weight):
                    value[rows] = 0

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, inputs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mini-batch step; returns its loss and gradient norm (before clipping). The gradients
        come from the model's `closed_form` when it has one, else from autograd (each table's sparse
        gradient coalesced once); either way as rows and their gradients per table. They are clipped
        as ``clip_grad_norm_`` does, the tables' clip factor and per-event scale (see
        `mini_batch_size`) folded into one multiplication.

        A mini-batch `batch_multiplier` (m) times the ordinary size counts as m ordinary ones: the
        table gradients, per-event sums, already add up as theirs would; the dense gradient, a mean,
        is multiplied by m after clipping (each of the m would have been clipped on its own mean)."""
        for param in self._params:
            param.grad = None
        closed = None if self.autocast else self.model.closed_form(x, y, inputs)
        if closed is not None:
            loss, sparse = closed.loss, closed.tables
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(self._forward(x, inputs), y)
            loss.backward()
            sparse = {}
            for name, table in self.tables.items():
                if table.weight.grad is not None:
                    grad = table.weight.grad.coalesce()
                    sparse[name] = (grad._indices()[0], grad._values())
                    table.weight.grad = None  # what the step applies is `sparse`, scaled below
        dense = [p.grad for p in self.dense_params.values() if p.grad is not None]
        grads = [g for _, g in sparse.values()] + dense
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        factor = torch.clamp(clip / (norm + 1e-6), max=1.0)
        m = self.batch_multiplier
        if dense:
            torch._foreach_mul_(dense, factor * m if m != 1 else factor)
        scale = factor * float(len(y)) if PER_EVENT_TABLE_GRADIENTS else factor * m
        if sparse:
            torch._foreach_mul_([grad for _, grad in sparse.values()], scale)
        if isinstance(self.sparse_opt, SparseAdagrad):
            self.sparse_opt.step_rows([(self.tables[n].weight, rows, g) for n, (rows, g) in sparse.items()])
        else:
            for name, (rows, grad) in sparse.items():
                weight = self.tables[name].weight
                weight.grad = torch.sparse_coo_tensor(
                    rows.unsqueeze(0), grad, weight.shape, is_coalesced=True
                )
            self.sparse_opt.step()
        self.dense_opt.step()
        if self.settings.weight_decay > 0:
            self._decay_rows({name: rows for name, (rows, _) in sparse.items()}, lr)
        return loss.detach(), norm

    @torch.no_grad()
    def _decay_rows(self, rows: dict[str, torch.Tensor], lr: float) -> None:
        """Decoupled L2 on the table rows this mini-batch touched (lazy weight decay)."""
        keep = 1.0 - lr * self.settings.weight_decay
        for name, touched in rows.items():
            self.tables[name].weight[touched] *= keep

    # -- state ---------------------------------------------------------------------------------
    def state_tensors(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """Model weights and optimiser state as flat, named CPU copies (for safetensors); with
        ``copy=False`` the live tensors themselves, on their device (to slice before copying)."""

        def take(value: torch.Tensor) -> torch.Tensor:
            return value.detach().to("cpu", copy=True) if copy else value.detach()

        out = {f"model.{k}": take(v) for k, v in self.model.state_dict().items()}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for opt_name, opt in (("sparse", self.sparse_opt), ("dense", self.dense_opt)):
            for param, state in opt.state.items():
                for key, value in state.items():
                    name = f"optim.{opt_name}.{names[id(param)]}.{key}"
                    out[name] = take(value) if isinstance(value, torch.Tensor) else torch.tensor(value)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], optimizer: bool = True) -> None:
        """Inverse of `state_tensors`. Model names and shapes must match exactly (a `ValueError` lists
        what differs); optimiser state is loaded only when ``optimizer`` is true."""
        own = self.model.state_dict()
        given = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        problems = [f"missing {k}" for k in own if k not in given]
        problems += [f"unexpected {k}" for k in given if k not in own]
        problems += [
            f"{k} has shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}"
            for k, v in given.items()
            if k in own and v.shape != own[k].shape
        ]
        if problems:
            raise ValueError("model weights do not fit: " + "; ".join(problems[:10]))
        self.model.load_state_dict(given, strict=True)
        self._make_optimizers(self.sparse_opt.param_groups[0]["lr"])
        if not optimizer:
            return
        params = dict(self.model.named_parameters())
        for opt_name, opt in (("sparse", self.sparse_opt), ("dense", self.dense_opt)):
            prefix = f"optim.{opt_name}."
            for key, value in tensors.items():
                if key.startswith(prefix):
                    param_name, _, state_key = key.removeprefix(prefix).rpartition(".")
                    if param_name not in params:
                        raise ValueError(f"optimiser state {key} names no parameter of the model")
                    param = params[param_name]
                    opt.state[param][state_key] = _state_value(value, param)
