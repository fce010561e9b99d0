"""Copies of the model state for snapshots: every ``full_every``-th whole, the others as deltas.

`StateCopier` runs on the training thread, right after the window a snapshot includes and before the
next one: a full copy clones every tensor; a delta slices only the rows touched since the previous
copy (`stream_learner.snapshots.delta`), so that the training thread never stops long for a large
model. It remembers the layout (the shape of every tensor) of the state the next delta applies to.

With ``delta_first`` a full copy that has a base to continue is cut as a delta as well: the delta is
published first, and reaches subscribers in milliseconds, and the whole state right after it as a
snapshot of its own (it adds no window), whose encoding, commit and load take a second or more for a
large model (docs/decisions/delta-before-full.md).
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
    full: dict[str, torch.Tensor] | None = None  # with a delta: the whole state, published after it


@dataclass
class StateCopier:
    learner: Learner
    full_every: int = 1
    #: Deltas since the last full copy; None when the next copy must be full.
    since_full: int | None = None
    #: The shape of every tensor of the state the next delta applies to.
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: A full copy that has a base is also cut as the delta from it (`StateCopy.full` holds the whole).
    delta_first: bool = False

    def copy(self) -> StateCopy:
        """The state now (call it on the training thread): whole, or as the delta from the previous
        copy, or both (``delta_first``)."""
        touched = self.learner.trainer.take_touched()
        since = self.since_full
        full = since is None or since + 1 >= self.full_every
        tensors = self.learner.tensors(copy=full)  # a delta copies only what it takes
        cut = since is not None and (not full or self.delta_first)
        copied = delta.extract(tensors, touched, self.learner.spec.fields, self.layout) if cut else tensors
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        self.layout = shapes if full else {**self.layout, **shapes}
        self.since_full = 0 if full or since is None else since + 1
        state = self.learner.state()
        if cut:
            return StateCopy(copied, state, "DELTA", full=tensors if full else None)
        return StateCopy(copied, state, "FULL")
