"""Copies of the model state for snapshots: every ``full_every``-th whole, the others as deltas.

`StateCopier` runs on the training thread, right after the window a snapshot includes and before the
next one: a full copy clones every tensor; a delta slices only the rows touched since the previous
copy (`stream_learner.snapshots.delta`), so that the training thread never stops long for a large
model. It remembers the layout (the shape of every tensor) of the state the next delta applies to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stream_learner.learning.learner import Learner
from stream_learner.snapshots import delta
from stream_learner.snapshots.format import SnapshotKind


@dataclass(frozen=True)
class StateCopy:
    """The model state after a window: tensors for the payload (all of them for a full snapshot, the
    delta from the previous copy otherwise), learner state for resume."""

    tensors: dict[str, torch.Tensor]
    learner_state: dict[str, Any]
    kind: SnapshotKind = "FULL"


@dataclass
class StateCopier:
    learner: Learner
    full_every: int = 1
    #: Deltas since the last full copy; None when the next copy must be full.
    since_full: int | None = None
    #: The shape of every tensor of the state the next delta applies to.
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def copy(self) -> StateCopy:
        """The state now (call it on the training thread): whole, or as the delta from the previous copy."""
        touched = self.learner.trainer.take_touched()
        full = self.since_full is None or self.since_full + 1 >= self.full_every
        tensors = self.learner.tensors(copy=full)  # a delta copies only what it takes
        copied = tensors if full else delta.extract(tensors, touched, self.learner.spec.fields, self.layout)
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        self.layout = shapes if full else {**self.layout, **shapes}
        self.since_full = 0 if full else (self.since_full or 0) + 1
        return StateCopy(copied, self.learner.state(), "FULL" if full else "DELTA")
