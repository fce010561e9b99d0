"""Optimisers for the sparse (embedding-table) part of a model.

``adagrad`` is Adagrad for coalesced sparse gradients (`SparseAdagrad`: torch's update, in a few
index operations instead of torch's general sparse arithmetic); ``adam`` is torch's SparseAdam;
``rowwise_adagrad`` keeps one accumulator per row instead of one per weight (the mean of the row's
squared gradient, as in FBGEMM's row-wise Adagrad), which saves a table's worth of optimiser memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

SparseKind = Literal["adagrad", "adam", "rowwise_adagrad"]


class SparseAdagrad(torch.optim.Optimizer):
    """torch's Adagrad (no learning-rate decay, no initial accumulator) for sparse gradients that the
    trainer has coalesced: per touched row, sum += g^2, then w -= lr * g / (sqrt(sum) + eps). Its
    state has torch's names and shapes (``sum``, a float ``step``), so snapshots of either restore
    into the other. Every step touches only the rows in the gradient."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.1, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param] = {"step": torch.tensor(0.0), "sum": torch.zeros_like(param)}

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        updates = []
        for param in (p for group in self.param_groups for p in group["params"]):
            if param.grad is not None:
                grad = param.grad if param.grad.is_coalesced() else param.grad.coalesce()
                updates.append((param, grad._indices()[0], grad._values()))
        self.step_rows(updates)

    @torch.no_grad()
    def step_rows(self, updates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """`step` for gradients given as (table, its unique rows, their gradients) instead of sparse
        tensors (what a trainer that computes row gradients itself has: no sparse tensor to build)."""
        if not updates:
            return
        groups = {id(param): group for group in self.param_groups for param in group["params"]}
        torch._foreach_add_([self.state[param]["step"] for param, _, _ in updates], 1.0)
        for param, rows, values in updates:
            # Unique rows: read, update and write back each one (cheaper than index_add_).
            acc = self.state[param]["sum"]
            summed = acc.index_select(0, rows).addcmul_(values, values)
            acc.index_copy_(0, rows, summed)
            group = groups[id(param)]
            std = summed.sqrt_().add_(group["eps"])
            param.index_copy_(0, rows, param.index_select(0, rows).addcdiv_(values, std, value=-group["lr"]))


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row, for sparse gradients of 2-d tables."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.1, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.coalesce()
                state = self.state[param]
                if not state:
                    state["sum"] = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)
                rows, values = grad.indices()[0], grad.values()
                acc = state["sum"]
                acc.index_add_(0, rows, values.pow(2).mean(dim=1))
                scale = group["lr"] / (acc[rows].sqrt() + group["eps"])
                param.index_add_(0, rows, -values * scale.unsqueeze(1))


#: Per-row optimiser state that divides the step: Adagrad's (and row-wise Adagrad's) sum of squared
#: gradients, Adam's running mean of them.
SECOND_MOMENTS = ("sum", "exp_avg_sq")


@torch.no_grad()
def is_row_state(value: object, weight: torch.Tensor) -> bool:
    """Optimiser state with one entry per row of the table (as opposed to a step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == weight.shape[0]


def scale_second_moments(
    optimizer: torch.optim.Optimizer, weight: torch.Tensor, rows: torch.Tensor, factor: float
) -> dict[str, torch.Tensor]:
    """Multiply the second moments of ``rows`` of table ``weight`` by ``factor`` (forgetting: the
    rows' next steps grow by 1 / sqrt(factor), and shrink again as they see new gradients). Returns
    the previous values, for `restore_rows`."""
    state = optimizer.state.get(weight, {})
    saved = {}
    for key in SECOND_MOMENTS:
        value = state.get(key)
        if is_row_state(value, weight):
            saved[key] = value[rows].clone()
            value[rows] = saved[key] * factor
    return saved


@torch.no_grad()
def restore_rows(
    optimizer: torch.optim.Optimizer, weight: torch.Tensor, rows: torch.Tensor, saved: dict[str, torch.Tensor]
) -> None:
    """Put back the row state that `scale_second_moments` returned."""
    state = optimizer.state.get(weight, {})
    for key, values in saved.items():
        state[key][rows] = values


def sparse_optimizer(kind: SparseKind, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The optimiser for the embedding tables (which must produce sparse gradients)."""
    if kind == "adam":
        return torch.optim.SparseAdam(params, lr=lr)
    if kind == "rowwise_adagrad":
        return RowWiseAdagrad(params, lr=lr)
    return SparseAdagrad(params, lr=lr)
