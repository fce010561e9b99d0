"""Warm start: where the first model of a deployment comes from when there is no snapshot to resume.

The job restores the newest committed snapshot of its model when there is one (`recovery`). When
nothing was restored, `initialise` applies the warm start configured in ``[warm_start]``:

- ``source = "file"``: the model, optimiser and learner state of a snapshot file at ``path`` (one
  full snapshot in the checkpoint-file format of `recovery.Checkpoints`, e.g. a file of another
  deployment's ``snapshot.checkpoint_dir``). Its model spec must equal the configured one.
- ``pretrained``: a safetensors file of table weights, named like the model's tables
  (``embeddings.user``, ``linear.weights.item``, ...; see `RecModel.tables`), each with the table's
  shape; the paper's pretrained initialisation. For a field with a dynamic table the file must also
  carry that field's ``features.<field>.*`` arrays (its rows mean nothing without the id mapping).

Anything that does not fit (names, shapes, spec) raises `WarmStartError` saying what differs, before
any input is read. Nothing here unpickles: both files are parsed as safetensors or Avro.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError, WarmStartError
from stream_learner.learning.features import STATE_ARRAYS, DynamicField
from stream_learner.learning.learner import Learner
from stream_learner.learning.models import ModelSpec

if TYPE_CHECKING:
    from stream_learner.snapshots.recovery import Restored

log = logging.getLogger(__name__)


def initialise(settings: Settings, learner: Learner, restored: Restored) -> None:
    """Apply the configured warm start unless a snapshot was restored (``restored.layout`` is set)."""
    if restored.layout:
        return
    w = settings.warm_start
    if w.source == "file" and w.path is not None:
        from_snapshot_file(learner, w.path)
        log.info("model %s warm-started from snapshot file %s", settings.model.name, w.path)
    if w.pretrained is not None:
        names = load_pretrained(learner, w.pretrained)
        log.info("model %s tables %s initialised from %s", settings.model.name, names, w.pretrained)


def from_snapshot_file(learner: Learner, path: Path) -> None:
    """Load the full snapshot in the file at ``path`` into ``learner``."""
    from stream_learner.snapshots.recovery import Checkpoints

    try:
        snapshot = Checkpoints.read(Path(path))
    except (OSError, SnapshotError) as exc:
        raise WarmStartError("warm_start.path", f"{path}: not a readable snapshot file: {exc}") from None
    meta = snapshot.meta
    if meta.kind != "FULL":
        raise WarmStartError(
            "warm_start.path", f"{path}: snapshot v{meta.version} is a {meta.kind}, not a full one"
        )
    spec = ModelSpec.from_json(meta.spec)
    if spec != learner.spec:
        raise WarmStartError(
            "warm_start.path",
            f"{path}: the snapshot's model spec {spec} differs from the configured {learner.spec}",
        )
    try:
        learner.restore(snapshot.tensors(), meta.state_dict().get("learner", {}))
    except (ValueError, SnapshotError) as exc:
        raise WarmStartError("warm_start.path", f"{path}: {exc}") from None


def load_pretrained(learner: Learner, path: Path) -> list[str]:
    """Copy the tables in the safetensors file at ``path`` into the model; return their names."""
    try:
        given = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise WarmStartError(
            "warm_start.pretrained", f"{path}: not a readable safetensors file: {exc}"
        ) from None
    tables = learner.model.tables()
    fields = {f.name: f for f in learner.features.fields if isinstance(f, DynamicField)}
    feature_names = {f"features.{name}.{k}": name for name in fields for k in STATE_ARRAYS}
    unknown = sorted(set(given) - set(tables) - set(feature_names))
    if unknown:
        raise WarmStartError(
            "warm_start.pretrained",
            f"{path}: {unknown} name no table of the model; its tables are {sorted(tables)}",
        )
    problems = [
        f"{name} has shape {tuple(t.shape)}, the model's has {tuple(tables[name].weight.shape)}"
        for name, t in given.items()
        if name in tables and t.shape != tables[name].weight.shape
    ]
    table_of = {
        learner.spec.fields[i].name: [t for t, j in learner.model.table_fields().items() if j == i]
        for i in range(len(learner.spec.fields))
    }
    mapped = []  # dynamic fields whose id mapping the file holds
    for name in fields:
        wanted = [f"features.{name}.{k}" for k in STATE_ARRAYS]
        held = [n for n in wanted if n in given]
        partial = 0 < len(held) < len(wanted)
        if partial or (not held and any(t in given for t in table_of[name])):
            problems.append(f"the tables of dynamic field {name} need all of {wanted} in the file")
        elif held:
            mapped.append(name)
    if problems:
        raise WarmStartError("warm_start.pretrained", f"{path}: " + "; ".join(problems))
    for name in mapped:
        try:
            fields[name].load({k: given[f"features.{name}.{k}"].numpy() for k in STATE_ARRAYS})
        except ValueError as exc:
            raise WarmStartError("warm_start.pretrained", f"{path}: {exc}") from None
    with torch.no_grad():
        for name, tensor in given.items():
            if name in tables:
                tables[name].weight.copy_(tensor.to(tables[name].weight))
    return sorted(n for n in given if n in tables)
