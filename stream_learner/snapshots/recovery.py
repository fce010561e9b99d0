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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError, WarmStartError
from stream_learner.ingest.windowing import Windower
from stream_learner.learning.learner import Learner
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots.checkpoints import Checkpoints
from stream_learner.snapshots.format import Snapshot, SnapshotMeta
from stream_learner.snapshots.log import SnapshotLog

log = logging.getLogger(__name__)


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
    candidates: Iterable[list[Snapshot]],
    where: str,
    settings: Settings,
    learner: Learner,
    windower: Windower,
    newest: Callable[[], int],
    at_least: int = 0,
) -> Restored | None:
    """Restore the first of the ``candidates`` chains (newest first) that loads; None when none
    does, or when the newest ends before version ``at_least``."""
    for chain in candidates:
        if chain[-1].meta.version < at_least:
            log.info("%s ends at v%d, before v%d", where, chain[-1].meta.version, at_least)
            return None
        try:
            fold, spec = chains.load(chain, on_refused=_refused_delta)
        except SnapshotError as err:
            log.warning("refused snapshot v%d from %s: %s", chain[0].meta.version, where, err)
            continue
        if spec != learner.spec:
            raise WarmStartError(
                "model",
                f"snapshot v{fold.meta.version} has model spec {spec}, "
                f"but the configuration builds {learner.spec}",
            )
        meta = fold.meta
        _apply_state(meta, fold, learner, windower)
        topic = settings.input.topic
        resume = {p: nxt for (t, p), nxt in meta.resume_offsets().items() if t == topic}
        version = max(newest(), meta.version)
        log.info(
            "restored model %s v%d (full v%d + %d deltas) from %s; resuming at %s",
            settings.model.name, meta.version, fold.base.version, fold.applied - 1, where, resume,
        )  # fmt: skip
        return Restored(
            version=version,
            resume=resume,
            since_full=fold.applied - 1 if meta.version == version else None,
            layout={n: tuple(t.shape) for n, t in fold.tensors.items()},
            meta=meta,
        )
    return None


def _refused_delta(snap: Snapshot, err: SnapshotError) -> None:
    log.warning("refused delta v%d: %s; restoring the version before it", snap.meta.version, err)


def _apply_state(meta: SnapshotMeta, fold: chains.Fold, learner: Learner, windower: Windower) -> None:
    """Load a snapshot's state (of the learner's spec) into the learner and the windowing state."""
    state = meta.state_dict()
    learner.restore(fold.tensors, state.get("learner", {}))
    consumed = {int(p): int(o) for p, o in state.get("consumed", {}).items()}
    windower.restore(state.get("windowing", {}), consumed)
