"""Scoring and training one window on the chosen device.

The trainer takes numpy rows and labels and does all the torch work: the device and its copies,
mini-batches, the two optimisers (sparse for embedding tables, Adam for dense weights), weight decay,
clipping, and the guard that rolls a window back when its loss or gradients are not finite.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stream_learner.config import TrainSettings
from stream_learner.models.base import RecModel
from stream_learner.quality import log_loss, roc_auc

EVAL_CHUNK = 1 << 16


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is present, else the CPU; ``cuda[:N]`` fails clearly without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but no CUDA device is available")
    return device


@dataclass(frozen=True)
class Evaluation:
    """Prequential quality of a window under the model as it stood."""

    loss: float
    auc: float
    count: int


@dataclass(frozen=True)
class StepResult:
    """What training on a window did. ``applied`` is False when the guard rolled it back."""

    applied: bool
    loss: float
    steps: int
    seconds: float
    reason: str | None = None


class _Rollback:
    """A copy of everything a window's training can change: the touched rows of every table and
    of their optimiser state, the dense weights and the dense optimiser's state."""

    def __init__(self, trainer: Trainer, rows: torch.Tensor) -> None:
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = {}
        for name, table in trainer.tables.items():
            touched = torch.unique(rows[:, trainer.table_field[name]])
            state = trainer.sparse_opt.state.get(table.weight, {})
            saved = {k: v[touched].clone() for k, v in state.items() if _is_row_state(v, table.weight)}
            scalars = {k: v.clone() for k, v in state.items() if not _is_row_state(v, table.weight)}
            self._rows[name] = (touched, table.weight.detach()[touched].clone(), {**saved, **scalars})
        self._dense = {n: p.detach().clone() for n, p in trainer.dense_params.items()}
        self._dense_opt = copy.deepcopy(trainer.dense_opt.state_dict())

    def touched(self) -> dict[str, torch.Tensor]:
        """The rows of each table this window touches (on the CPU)."""
        return {name: touched.cpu() for name, (touched, _, _) in self._rows.items()}

    def restore(self, trainer: Trainer) -> None:
        with torch.no_grad():
            for name, (touched, weights, saved) in self._rows.items():
                table = trainer.tables[name]
                table.weight[touched] = weights
                if not saved:  # the optimiser had no state for this table before the window
                    trainer.sparse_opt.state.pop(table.weight, None)
                state = trainer.sparse_opt.state.get(table.weight, {})
                for k, v in saved.items():
                    if k not in state:
                        continue
                    if _is_row_state(state[k], table.weight):
                        state[k][touched] = v
                    else:
                        state[k].copy_(v)
            for n, p in trainer.dense_params.items():
                p.copy_(self._dense[n])
        trainer.dense_opt.load_state_dict(self._dense_opt)


def _is_row_state(value: torch.Tensor, weight: torch.Tensor) -> bool:
    return value.dim() > 0 and value.shape[0] == weight.shape[0]


class Trainer:
    """Evaluates and trains a `RecModel` window by window."""

    def __init__(self, model: RecModel, settings: TrainSettings, lr: float) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device)
        self.tables = model.tables()
        table_params = {id(t.weight) for t in self.tables.values()}
        self.dense_params = {n: p for n, p in model.named_parameters() if id(p) not in table_params}
        field_index = {t: i for i, t in enumerate(model.embeddings.keys())}
        self.table_field = {name: field_index[name.rsplit(".", 1)[-1]] for name in self.tables}
        sparse = [t.weight for t in self.tables.values()]
        if settings.sparse_optimizer == "adam":
            self.sparse_opt: torch.optim.Optimizer = torch.optim.SparseAdam(sparse, lr=lr)
        else:
            self.sparse_opt = torch.optim.Adagrad(sparse, lr=lr)
        self.dense_opt = torch.optim.Adam(
            list(self.dense_params.values()),
            lr=lr * settings.dense_lr_ratio,
            weight_decay=settings.weight_decay,
        )
        self._autocast = self.device.type == "cuda" and settings.bf16
        self._touched: dict[str, list[torch.Tensor]] = {name: [] for name in self.tables}
        if settings.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    # -- data movement -------------------------------------------------------------------------
    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for (n, fields) rows."""
        self.model.eval()
        out = []
        for lo in range(0, len(rows), EVAL_CHUNK):
            x = self._to_device(rows[lo : lo + EVAL_CHUNK])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
                logits = self.model(x)
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.empty(0, np.float32)

    def evaluate(self, rows: np.ndarray, labels: np.ndarray) -> Evaluation:
        probs = self.predict(rows)
        return Evaluation(log_loss(labels, probs), roc_auc(labels, probs), len(labels))

    # -- training ------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.sparse_opt.param_groups:
            group["lr"] = lr
        for group in self.dense_opt.param_groups:
            group["lr"] = lr * self.settings.dense_lr_ratio

    def train(self, rows: np.ndarray, labels: np.ndarray, lr: float, seed: int) -> StepResult:
        """Train on one window; roll it back entirely if any loss or gradient is not finite."""
        started = time.perf_counter()
        n = len(labels)
        if n == 0:
            return StepResult(True, math.nan, 0, 0.0)
        self.set_lr(lr)
        torch.manual_seed(seed)
        x_all = self._to_device(rows)
        y_all = self._to_device(labels.astype(np.float32))
        rollback = _Rollback(self, x_all)
        generator = torch.Generator().manual_seed(seed)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = 0
        self.model.train()
        for _ in range(self.settings.passes):
            order = torch.randperm(n, generator=generator).to(self.device)
            for lo in range(0, n, self.settings.batch_size):
                idx = order[lo : lo + self.settings.batch_size]
                loss = self._step(x_all[idx], y_all[idx], lr)
                finite &= torch.isfinite(loss)
                total += loss.detach().double() * len(idx)
                steps += 1
        mean_loss = float(total.item()) / (n * self.settings.passes)
        if not bool(finite.item()):
            rollback.restore(self)
            return StepResult(False, mean_loss, steps, time.perf_counter() - started, "non_finite")
        for name, rows_touched in rollback.touched().items():
            self._touched[name].append(rows_touched)
        return StepResult(True, mean_loss, steps, time.perf_counter() - started)

    def take_touched(self) -> dict[str, torch.Tensor]:
        """Rows of each table changed since the last call (sorted, unique), for delta snapshots."""
        out = {}
        for name, parts in self._touched.items():
            out[name] = torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.long)
            parts.clear()
        return out

    def _step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            logits = self.model(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        loss.backward()
        if self.settings.grad_clip > 0 and self.dense_params:
            norm = nn.utils.clip_grad_norm_(self.dense_params.values(), self.settings.grad_clip)
            loss = loss + 0.0 * norm  # a non-finite gradient norm makes the step's loss non-finite
        self.sparse_opt.step()
        self.dense_opt.step()
        if self.settings.weight_decay > 0:
            self._decay_rows(x, lr)
        return loss.detach()

    @torch.no_grad()
    def _decay_rows(self, x: torch.Tensor, lr: float) -> None:
        """Decoupled L2 on the embedding rows this mini-batch touched (lazy weight decay)."""
        keep = 1.0 - lr * self.settings.weight_decay
        for name, table in self.tables.items():
            touched = torch.unique(x[:, self.table_field[name]])
            table.weight[touched] *= keep

    # -- state ---------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Model weights and optimiser state as flat, named CPU tensors (for safetensors)."""
        out = {f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for opt_name, opt in (("sparse", self.sparse_opt), ("dense", self.dense_opt)):
            for param, state in opt.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        out[f"optim.{opt_name}.{names[id(param)]}.{key}"] = value.detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state_tensors`; names and shapes must match this trainer's model."""
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state, strict=True)
        params = dict(self.model.named_parameters())
        for opt_name, opt in (("sparse", self.sparse_opt), ("dense", self.dense_opt)):
            prefix = f"optim.{opt_name}."
            for key, value in tensors.items():
                if not key.startswith(prefix):
                    continue
                param_name, _, state_key = key[len(prefix) :].rpartition(".")
                param = params[param_name]
                opt.state[param][state_key] = value.to(param.device if value.dim() else "cpu")
