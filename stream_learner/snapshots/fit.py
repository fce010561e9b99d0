"""Whether a snapshot's optimiser state fits the learner that would take it in.

`chain.load` holds a full snapshot's model tensors to the ones its spec builds, and the learner's
restore refuses feature state that does not fit; but the optimiser state it takes as it finds it: a
full snapshot without the sparse optimiser's accumulators restored "complete" with them at zero,
and an accumulator of another shape or dtype would only fail once a window trains (every restart
again). `OptimiserLayout` is what a learner built from the settings holds (`of`), and `check`
refuses ("missing_tensor") a snapshot that lacks any of it, or whose optimiser state of any kind
does not fit the parameter it names. The learner's restore and its rollbacks check with it before
they change anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stream_learner.errors import SnapshotError
from stream_learner.learning.learner import Learner
from stream_learner.snapshots.format import SnapshotMeta

#: A tensor's shape and dtype name ("float32": a torch dtype's name without ``torch.``, as numpy's).
Shape = tuple[tuple[int, ...], str]


@dataclass(frozen=True)
class OptimiserLayout:
    """The optimiser tensors a learner holds as built, the shapes of its parameters, and the kind
    of its sparse optimiser (a snapshot of another kind has its optimiser state dropped)."""

    required: Mapping[str, Shape]  # ``optim.*`` name -> shape and dtype
    params: Mapping[str, Shape]  # parameter name (without ``model.``) -> shape and dtype
    sparse_optimizer: str

    @staticmethod
    def of(learner: Learner) -> OptimiserLayout:
        """The layout of ``learner`` as built: before it restores or trains anything."""
        tensors = learner.tensors(copy=False)

        def shapes(prefix: str) -> dict[str, Shape]:
            return {
                n[len(prefix) :]: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
                for n, t in tensors.items()
                if n.startswith(prefix)
            }

        return OptimiserLayout(
            {f"optim.{n}": s for n, s in shapes("optim.").items()},
            shapes("model."),
            learner.settings.train.sparse_optimizer,
        )

    def check(self, version: int, tensors: Mapping[str, np.ndarray], meta: SnapshotMeta) -> None:
        """`SnapshotError` ("missing_tensor") when the optimiser state of snapshot ``version`` (the
        state of ``meta``: ``tensors``) lacks what the learner holds, or does not fit."""
        kind = _sparse_optimizer(meta)
        other_kind = kind not in (None, self.sparse_optimizer)  # its sparse optimiser state is dropped

        def restored(name: str) -> bool:
            return name.startswith("optim.") and not (other_kind and name.startswith("optim.sparse."))

        problems = []
        for name, (shape, dtype) in self.required.items():
            tensor = tensors.get(name)
            if not restored(name):
                continue
            if tensor is None:
                problems.append(f"{name} is missing")
            elif (tuple(tensor.shape), str(tensor.dtype)) != (shape, dtype):
                problems.append(f"{name} is {tensor.dtype} {tuple(tensor.shape)}, not {dtype} {shape}")
        for name, tensor in tensors.items():
            if restored(name) and name not in self.required:
                problems += self._misfit(name, tensor)
        if problems:
            raise SnapshotError(
                "missing_tensor", f"v{version}: its optimiser state does not fit: {'; '.join(problems[:5])}"
            )

    def _misfit(self, name: str, tensor: np.ndarray) -> list[str]:
        """What is wrong with optimiser tensor ``name`` (``optim.<optimiser>.<parameter>.<key>``):
        it names no parameter, or it is neither a scalar nor of its parameter's (or rows') shape."""
        param = name.split(".", 2)[-1].rpartition(".")[0]
        fits = self.params.get(param)
        if fits is None:
            return [f"{name} names no parameter of the model"]
        shape, dtype = fits
        if tensor.ndim == 0:
            return []
        if tuple(tensor.shape) not in (shape, shape[:1]) or str(tensor.dtype) != dtype:
            return [f"{name} is {tensor.dtype} {tuple(tensor.shape)}; its parameter {dtype} {shape}"]
        return []


def _sparse_optimizer(meta: SnapshotMeta) -> object:
    """The sparse optimiser a snapshot's learner state names (None when it names none, or the
    state does not parse: the restore refuses that itself)."""
    try:
        learner = meta.state_dict().get("learner", {})
    except (ValueError, AttributeError, RuntimeError):  # RecursionError is a RuntimeError
        return None
    return learner.get("sparse_optimizer") if isinstance(learner, dict) else None
