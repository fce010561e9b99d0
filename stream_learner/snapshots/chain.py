"""Snapshot chains: a full snapshot and the deltas that continue it, folded into one state.

This is the one fold of the snapshot history. The learner's restart (`recovery`), the subscriber
(`stream_learner.serving`) and every tool that rebuilds the state at some version apply snapshots
through `Fold`, which refuses tensors holding NaN or infinite values ("non_finite": a model that
scores NaN, and whose every window the learner would skip); `load` adds the checks every reader that
will *use* the state makes first (its model spec is readable, its tensors are the ones that spec
builds), so that the learner and serving refuse exactly the same snapshots. Tensors are numpy arrays:
serving folds without torch, and the learner converts them as it restores them. Which snapshots form a
chain at all (versions one apart, the same spec) is `stream_learner.snapshots.log`'s to say.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from stream_learner.errors import SnapshotError
from stream_learner.scoring.layout import DTYPE, state_shapes
from stream_learner.scoring.spec import ModelSpec
from stream_learner.snapshots import delta
from stream_learner.snapshots.format import Snapshot, SnapshotMeta

#: Told about a delta that could not be applied (the fold stops before it).
OnRefused = Callable[[Snapshot, SnapshotError], None]


def continuing(full: Snapshot, later: Iterable[Snapshot]) -> list[Snapshot]:
    """``full`` and the deltas of ``later`` (in log order) that continue it without a gap."""
    out = [full]
    for snap in later:
        if snap.meta.base_version != out[-1].meta.version:
            break
        out.append(snap)
    return out


#: Which tensors a fold holds (the others are checked like them, then kept as placeholders).
Keep = Callable[[str], bool]


def _everything(name: str) -> bool:
    return True


class Fold:
    """The state a chain has reached: the full snapshot's tensors with the deltas after it applied
    in order. ``tensors`` may be changed in place only through `apply` (a servable model may share
    them). With ``keep``, the tensors it does not name are checked and then held as a
    `delta.placeholder` of their dtype and shape (serving drops the optimiser state so)."""

    def __init__(self, full: Snapshot, keep: Keep = _everything) -> None:
        if full.meta.form != "training":
            raise SnapshotError(
                "form",
                f"v{full.meta.version} is a serving snapshot: it has no optimiser state and only the "
                "rows that hold information, so it cannot restore a learner (restore from the "
                "training snapshots of snapshot.topic)",
            )
        if full.meta.kind != "FULL":
            raise SnapshotError("gap", f"v{full.meta.version} is a {full.meta.kind}, not a full snapshot")
        tensors = full.tensors()
        check_finite(full.meta.version, tensors)
        self.keep = keep
        self.tensors: dict[str, np.ndarray] = {
            name: t if keep(name) else delta.placeholder(t) for name, t in tensors.items()
        }
        self.meta: SnapshotMeta = full.meta
        self.base: SnapshotMeta = full.meta
        self.applied = 1  # snapshots folded in, the full one included

    def copy(self) -> Fold:
        """An independent copy (every tensor copied, placeholders shared): to fold on while this
        state stays in use."""
        other = copy.copy(self)
        other.tensors = {name: t.copy() if t.flags.writeable else t for name, t in self.tensors.items()}
        return other

    def apply(self, snap: Snapshot) -> None:
        """Fold in the next delta. Raises `SnapshotError` ("gap" when it does not continue this
        state, "bad_delta" when it does not fit it) and then leaves the state as it was."""
        m = snap.meta
        if m.form != self.meta.form:
            raise SnapshotError(
                "form", f"v{m.version} is a {m.form} snapshot; the state is a {self.meta.form} one"
            )
        if m.kind != "DELTA" or m.base_version != self.meta.version:
            raise SnapshotError(
                "gap", f"{m.kind.lower()} v{m.version} continues v{m.base_version}, not v{self.meta.version}"
            )
        if m.spec != self.meta.spec and read_spec(m) != read_spec(self.meta):
            raise SnapshotError(
                "spec", f"delta v{m.version} has another model spec than v{self.meta.version}"
            )
        tensors = snap.tensors()
        check_finite(m.version, tensors)
        delta.apply(self.tensors, tensors, self.keep)
        self.meta = m
        self.applied += 1

    def apply_all(self, deltas: Iterable[Snapshot], on_refused: OnRefused | None = None) -> None:
        """Fold in ``deltas`` in order (`apply_in_order`)."""
        apply_in_order(self.apply, deltas, on_refused)


def apply_in_order(
    apply: Callable[[Snapshot], None], deltas: Iterable[Snapshot], on_refused: OnRefused | None = None
) -> None:
    """``apply`` each of ``deltas`` in order. At the first that fails: with ``on_refused``, report it
    and stop there; without, raise its `SnapshotError`."""
    for snap in deltas:
        try:
            apply(snap)
        except SnapshotError as err:
            if on_refused is None:
                raise
            on_refused(snap, err)
            return


def check_finite(version: int, tensors: dict[str, np.ndarray]) -> None:
    """`SnapshotError` ("non_finite") when a floating-point tensor holds NaN or an infinity."""
    for name, tensor in tensors.items():
        if tensor.dtype.kind in "fc" and not bool(np.isfinite(tensor).all()):
            bad = int((~np.isfinite(tensor)).sum())
            raise SnapshotError("non_finite", f"v{version}: {bad} values of {name} are NaN or infinite")


def newest_state(snapshots: Sequence[Snapshot]) -> dict[str, np.ndarray]:
    """The state at the last of ``snapshots`` (in log order): its newest full snapshot with every
    delta after it folded in. Raises `SnapshotError` when there is no full one or a delta does not
    continue the one before it ("gap")."""
    start = max((i for i, s in enumerate(snapshots) if s.meta.kind == "FULL"), default=None)
    if start is None:
        raise SnapshotError("gap", "no full snapshot to apply the deltas to")
    fold = Fold(snapshots[start])
    fold.apply_all(snapshots[start + 1 :])
    return fold.tensors


def read_spec(meta: SnapshotMeta) -> ModelSpec:
    """The model spec a snapshot carries; `SnapshotError` ("spec") when it cannot be read."""
    try:
        return ModelSpec.from_json(meta.spec)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError("spec", f"v{meta.version} has an unreadable model spec: {exc!r}") from None


def load(
    chain: Sequence[Snapshot], on_refused: OnRefused | None = None, keep: Keep = _everything
) -> tuple[Fold, ModelSpec]:
    """The verified state of ``chain`` (a full snapshot, then the deltas continuing it) and its spec.
    The full snapshot must carry a readable spec and exactly the model tensors that spec builds
    (names, shapes, float32), or the chain is refused (`SnapshotError`); the deltas are folded in as
    `Fold.apply_all` does, holding the tensors ``keep`` names."""
    full = chain[0]
    spec = read_spec(full.meta)
    fold = Fold(full, keep)
    model = {
        k[len("model.") :]: (tuple(v.shape), str(v.dtype))
        for k, v in fold.tensors.items()
        if k.startswith("model.")
    }
    try:
        expected = {name: (shape, str(DTYPE)) for name, shape in state_shapes(spec).items()}
    except (ValueError, TypeError) as exc:
        raise SnapshotError("spec", f"v{full.meta.version}: the model spec builds no model: {exc}") from None
    if model != expected:
        differs = sorted(set(model.items()) ^ set(expected.items()))[:4]
        raise SnapshotError(
            "spec", f"v{full.meta.version} does not hold the model its spec describes: {differs}"
        )
    fold.apply_all(chain[1:], on_refused)
    return fold, spec
