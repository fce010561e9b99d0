"""The learner's restart: the newest committed model, and the input offsets it accounts for.

On start the learner restores the newest committed snapshot chain (a full snapshot and the deltas
after it, see `stream_learner.snapshots.delta`) and resumes the input at the offsets stored with its last
snapshot, so that in the committed history every event is trained exactly once. The chain comes from
the snapshot topic, read with ``read_committed`` backwards from its end (`SnapshotLog`), or from the
local checkpoint folder (``snapshot.checkpoint_dir``) when that holds the topic's newest version. A
chain that does not verify is refused with the reason in the log, and the next older one is tried;
if the model restored is older than the topic's newest version, version numbers still continue above
that version and the next snapshot is a full one. A model with no snapshot to restore starts as
``[warm_start]`` says (`stream_learner.snapshots.warmstart`).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError, WarmStartError
from stream_learner.ingest.windowing import Windower
from stream_learner.learning.learner import Learner
from stream_learner.learning.models import ModelSpec
from stream_learner.snapshots import delta
from stream_learner.snapshots.format import Assembler, Snapshot, SnapshotMeta, decode_chunk
from stream_learner.snapshots.log import SnapshotLog

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class Restored:
    """Where the learner stands after `restore`."""

    version: int = 0  # the newest version of the model: the next snapshot is version + 1
    resume: dict[int, int] = field(default_factory=dict)  # next offset per input partition
    since_full: int | None = None  # deltas since the full snapshot restored; None: next one is full
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)  # shapes of the state restored
    meta: SnapshotMeta | None = None  # the snapshot restored


def restore(settings: Settings, learner: Learner, windower: Windower) -> Restored:
    """Load the newest committed model into ``learner`` and ``windower``; say where to resume."""
    s = settings
    with SnapshotLog(s.kafka, s.snapshot.topic, s.model.name) as snapshots:

        def newest() -> int:
            return snapshots.newest_version or 0

        if s.warm_start.source == "none":  # start over in place: a fresh model above the old versions
            next(snapshots.newest_first(), None)  # the newest page says the newest version
            log.info("warm_start.source is none: model %s starts afresh after v%d", s.model.name, newest())
            return Restored(version=newest())
        restored = None
        if s.snapshot.checkpoint_dir is not None:
            next(snapshots.newest_first(), None)  # the newest page says the newest version
            local = Checkpoints(s.snapshot.checkpoint_dir, s.model.name).chains()
            restored = _restore_from(local, "checkpoint folder", s, learner, windower, newest, newest())
        if restored is None:
            restored = _restore_from(snapshots.chains(), s.snapshot.topic, s, learner, windower, newest)
    if restored is None:
        log.info("no snapshot of model %s to restore", s.model.name)
        return Restored(version=newest())
    return restored


def _restore_from(
    chains: Iterable[list[Snapshot]],
    where: str,
    settings: Settings,
    learner: Learner,
    windower: Windower,
    newest: Callable[[], int],
    at_least: int = 0,
) -> Restored | None:
    """Restore the first of ``chains`` (newest first) that loads; None when none does, or when the
    newest ends before version ``at_least``."""
    for chain in chains:
        if chain[-1].meta.version < at_least:
            log.info("%s ends at v%d, before v%d", where, chain[-1].meta.version, at_least)
            return None
        try:
            tensors, meta, used = load_chain(chain)
        except SnapshotError as err:
            log.warning("refused snapshot v%d from %s: %s", chain[0].meta.version, where, err)
            continue
        apply_state(meta, tensors, learner, windower)
        topic = settings.input.topic
        resume = {p: nxt for (t, p), nxt in meta.resume_offsets().items() if t == topic}
        version = max(newest(), meta.version)
        log.info(
            "restored model %s v%d (full v%d + %d deltas) from %s; resuming at %s",
            settings.model.name, meta.version, chain[0].meta.version, used - 1, where, resume,
        )  # fmt: skip
        return Restored(
            version=version,
            resume=resume,
            since_full=used - 1 if meta.version == version else None,
            layout={n: tuple(t.shape) for n, t in tensors.items()},
            meta=meta,
        )
    return None


def load_chain(chain: list[Snapshot]) -> tuple[dict[str, torch.Tensor], SnapshotMeta, int]:
    """The state of a full snapshot with the deltas after it applied, up to the first that fails;
    its metadata and how many snapshots went into it. Raises `SnapshotError` when the full one fails."""
    tensors = chain[0].tensors()
    used = 1
    for snap in chain[1:]:
        try:
            delta.apply(tensors, snap.tensors())
        except SnapshotError as err:
            log.warning(
                "refused delta v%d: %s; restoring v%d", snap.meta.version, err, chain[used - 1].meta.version
            )
            break
        used += 1
    return tensors, chain[used - 1].meta, used


def apply_state(
    meta: SnapshotMeta, tensors: dict[str, torch.Tensor], learner: Learner, windower: Windower
) -> None:
    """Load a snapshot's state into the learner and the windowing state; the spec must match."""
    spec = ModelSpec.from_json(meta.spec)
    if spec != learner.spec:
        raise WarmStartError(
            "model",
            f"snapshot v{meta.version} has model spec {spec}, but the configuration builds {learner.spec}",
        )
    state = meta.state_dict()
    learner.restore(tensors, state.get("learner", {}))
    consumed = {int(p): int(o) for p, o in state.get("consumed", {}).items()}
    windower.restore(state.get("windowing", {}), consumed)


class Checkpoints:
    """A model's committed snapshots in a local folder, one file each (``v<version>.snapshot``: its
    Avro envelopes, each preceded by its length as 4 bytes big-endian). Files are written atomically
    after the commit; a full snapshot removes the files before it."""

    def __init__(self, folder: Path, model_name: str) -> None:
        self.dir = Path(folder) / model_name

    def _files(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(p.stem[1:], p) for p in self.dir.glob("v*.snapshot")]
        return sorted((int(v), p) for v, p in found if v.isdigit())

    def write(self, meta: SnapshotMeta, messages: Iterable[bytes]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"v{meta.version:012d}.snapshot"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for message in messages:
                f.write(_LENGTH.pack(len(message)))
                f.write(message)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if meta.kind == "FULL":
            for version, old in self._files():
                if version < meta.version:
                    old.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path) -> Snapshot:
        """The snapshot in one file; `SnapshotError` when it is not one complete, verified snapshot."""
        data = path.read_bytes()
        assembler = Assembler()
        pos, snapshot = 0, None
        while pos < len(data):
            if snapshot is not None or pos + _LENGTH.size > len(data):
                raise SnapshotError("truncated", f"{path}: stray bytes after the snapshot")
            (length,) = _LENGTH.unpack_from(data, pos)
            pos += _LENGTH.size
            if pos + length > len(data):
                raise SnapshotError("truncated", f"{path}: a message runs past the end of the file")
            snapshot = assembler.add(decode_chunk(data[pos : pos + length]))
            pos += length
        if snapshot is None:
            raise SnapshotError("truncated", f"{path}: the snapshot is incomplete")
        return snapshot

    def chains(self) -> Iterator[list[Snapshot]]:
        """Full snapshots with the deltas that continue them, newest first."""
        snaps: list[Snapshot] = []
        for _, path in self._files():
            try:
                snaps.append(self.read(path))
            except SnapshotError as err:
                log.warning("refused checkpoint %s: %s", path, err)
        for i in reversed(range(len(snaps))):
            if snaps[i].meta.kind == "FULL":
                yield delta.chain(snaps[i], snaps[i + 1 :])
