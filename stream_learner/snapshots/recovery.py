"""The learner's restart: the newest committed model, and the input offsets it accounts for.

On start the learner restores the newest committed snapshot chain (a full snapshot and the deltas
after it, see `stream_learner.snapshots.delta`) and resumes the input at the offsets stored with its last
snapshot, so that in the committed history every event is trained exactly once. The chain comes from
the snapshot topic, read with ``read_committed`` backwards from its end (`SnapshotLog`), or from the
local checkpoint folder (``snapshot.checkpoint_dir``) when that holds the topic's newest version.
The topic and the folder are read with the signature check of ``[snapshot]``, and the chain is
loaded with `chain.load`, exactly as the subscriber does. Whatever does not verify, or does not
restore (another model spec than the configured one, optimiser state that does not fit the learner
(`fit`), a learner state that does not parse, tensors the learner does not take), is refused with
the reason in the log and told to ``on_refused`` (a metric), and the next older chain is tried on a
fresh learner and windower: a restore that failed half-way leaves nothing behind. If the model
restored is older than the topic's newest verified version, version numbers still continue above
that version and the next snapshot is a full one. When no chain restores and some were of another
model spec, the configuration is what changed: `WarmStartError` (exit 2; a new model spec needs a
new ``model.name``). A model with no snapshot to restore starts as ``[warm_start]`` says
(`stream_learner.snapshots.warmstart`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError, WarmStartError
from stream_learner.ingest.windowing import Windower
from stream_learner.learning.learner import Learner
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots.checkpoints import Checkpoints
from stream_learner.snapshots.fit import OptimiserLayout
from stream_learner.snapshots.format import Chunk, Snapshot, SnapshotMeta
from stream_learner.snapshots.log import Entry, SnapshotLog

log = logging.getLogger(__name__)

#: Builds a fresh learner and windower (the restore starts over on new ones after a failed attempt).
Fresh = Callable[[], tuple[Learner, Windower]]
#: Told about every snapshot the restore skipped.
OnRefused = Callable[[SnapshotError], None]


@dataclass(frozen=True)
class Restored:
    """Where the learner stands after `restore`."""

    learner: Learner  # the restored model (or a fresh one)
    windower: Windower  # with the restored windowing state
    version: int = 0  # the newest version of the model: the next snapshot is version + 1
    resume: dict[int, int] = field(default_factory=dict)  # next offset per input partition
    since_full: int | None = None  # deltas since the full snapshot restored; None: next one is full
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)  # shapes of the state restored
    meta: SnapshotMeta | None = None  # the snapshot restored
    fits: OptimiserLayout | None = None  # the optimiser state a snapshot must give this learner


def restore(
    settings: Settings,
    fresh: Fresh,
    verifier: Callable[[Chunk], None] | None = None,
    on_refused: OnRefused | None = None,
    check_optimiser: bool = False,
) -> Restored:
    """Load the newest committed model into a learner and windower that ``fresh`` builds; say where
    to resume. ``verifier`` checks signatures; ``on_refused`` hears of every snapshot skipped;
    ``check_optimiser``: refuse snapshots whose optimiser state does not fit the learner (`fit`;
    for a whole learner, not one rank's shard of it)."""
    s = settings
    refused: OnRefused = on_refused or (lambda err: None)
    parts = _Parts(fresh, check_optimiser)

    def refused_entry(entry: Entry) -> None:
        assert entry.error is not None
        log.warning("refused snapshot data at offset %s: %s", entry.offset, entry.error)
        refused(entry.error)

    timeout = s.kafka.startup_timeout_seconds
    with SnapshotLog(s.kafka, s.snapshot.topic, s.model.name, refused_entry, timeout, verifier) as snapshots:

        def newest() -> int:
            return snapshots.newest_version or 0

        if s.warm_start.source == "none":  # start over in place: a fresh model above the old versions
            _same_model(_read_newest(snapshots), parts.learner)
            log.info("warm_start.source is none: model %s starts afresh after v%d", s.model.name, newest())
            return parts.restored(version=newest())
        restored = None
        if s.snapshot.checkpoint_dir is not None:
            _read_newest(snapshots)
            local = Checkpoints(s.snapshot.checkpoint_dir, s.model.name, verifier).chains(refused)
            restored = _restore_from(local, "checkpoint folder", s, parts, newest, refused, newest())
        if restored is None:
            restored = _restore_from(snapshots.chains(), s.snapshot.topic, s, parts, newest, refused)
    if restored is None:
        if parts.other_spec is not None:
            raise WarmStartError(
                "model", f"no snapshot on {s.snapshot.topic} restores, and {parts.other_spec}"
            )
        log.info("no snapshot of model %s to restore", s.model.name)
        return parts.restored(version=newest())
    return restored


def _read_newest(snapshots: SnapshotLog) -> SnapshotMeta | None:
    """Read back to the newest verified snapshot, which says the newest version; its metadata."""
    for entry in snapshots.newest_first():
        if entry.snapshot is not None:
            return entry.snapshot.meta
    return None


def _same_model(newest: SnapshotMeta | None, learner: Learner) -> None:
    """`WarmStartError` when the model's newest snapshot is of another model spec than ``learner``:
    starting over in place with a new spec would publish snapshots no reader takes as this model's."""
    if newest is not None and chains.read_spec(newest) != learner.spec:
        raise WarmStartError(
            "model",
            f"the newest snapshot, v{newest.version}, has model spec {newest.spec}; the configuration "
            f"builds {learner.spec}: a new model spec needs a new model.name",
        )


class _Parts:
    """The learner and windower being restored into: clean until an attempt fails half-way, which
    `spoil` replaces with fresh ones."""

    def __init__(self, fresh: Fresh, check_optimiser: bool) -> None:
        self._fresh = fresh
        self.learner, self.windower = fresh()
        self.fits = OptimiserLayout.of(self.learner) if check_optimiser else None
        self.other_spec: str | None = None  # a chain of another model spec was refused: which

    def spoil(self) -> None:
        del self.learner, self.windower  # the half-restored model goes before a new one is built
        self.learner, self.windower = self._fresh()

    def restored(self, **fields: Any) -> Restored:
        return Restored(self.learner, self.windower, fits=self.fits, **fields)


def _restore_from(
    candidates: Iterable[list[Snapshot]],
    where: str,
    settings: Settings,
    parts: _Parts,
    newest: Callable[[], int],
    refused: OnRefused,
    at_least: int = 0,
) -> Restored | None:
    """Restore the first of the ``candidates`` chains (newest first) that loads; None when none
    does, or when the newest ends before version ``at_least``."""

    def refused_delta(snap: Snapshot, err: SnapshotError) -> None:
        log.warning("refused delta v%d: %s; restoring the version before it", snap.meta.version, err)
        refused(err)

    for chain in candidates:
        if chain[-1].meta.version < at_least:
            log.info("%s ends at v%d, before v%d", where, chain[-1].meta.version, at_least)
            return None
        try:
            fold, spec = chains.load(chain, on_refused=refused_delta)
        except SnapshotError as err:
            log.warning("refused snapshot v%d from %s: %s", chain[0].meta.version, where, err)
            refused(err)
            continue
        learner, windower = parts.learner, parts.windower
        meta = fold.meta
        if spec != learner.spec:
            parts.other_spec = parts.other_spec or (
                f"v{meta.version} has model spec {spec}, but the configuration builds {learner.spec}: "
                "a new model spec needs a new model.name"
            )
            log.warning("refused snapshot v%d from %s: it is another model (%s)", meta.version, where, spec)
            refused(SnapshotError("spec", f"v{meta.version} has another model spec than the configured one"))
            continue
        try:
            if parts.fits is not None:
                parts.fits.check(meta.version, fold.tensors, meta)
        except SnapshotError as err:
            log.warning("refused snapshot v%d from %s: %s", meta.version, where, err)
            refused(err)
            continue
        try:
            _apply_state(meta, fold, learner, windower)
        except SnapshotError as err:
            log.warning("refused snapshot v%d from %s: %s", meta.version, where, err)
            refused(err)
            del learner, windower
            parts.spoil()
            continue
        topic = settings.input.topic
        resume = {p: nxt for (t, p), nxt in meta.resume_offsets().items() if t == topic}
        version = max(newest(), meta.version)
        log.info(
            "restored model %s v%d (full v%d + %d deltas) from %s; resuming at %s",
            settings.model.name, meta.version, fold.base.version, fold.applied - 1, where, resume,
        )  # fmt: skip
        return Restored(
            learner,
            windower,
            version=version,
            resume=resume,
            since_full=fold.applied - 1 if meta.version == version else None,
            layout={n: tuple(t.shape) for n, t in fold.tensors.items()},
            meta=meta,
            fits=parts.fits,
        )
    return None


def _apply_state(meta: SnapshotMeta, fold: chains.Fold, learner: Learner, windower: Windower) -> None:
    """Load a snapshot's state (of the learner's spec) into the learner and the windowing state;
    `SnapshotError` ("state") when they do not take it (the parts are then half-restored: drop them)."""
    try:
        state = meta.state_dict()
        learner.restore(fold.tensors, state.get("learner", {}))
        consumed = {int(p): int(o) for p, o in state.get("consumed", {}).items()}
        windower.restore(state.get("windowing", {}), consumed)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise SnapshotError("state", f"v{meta.version}: its state does not restore: {exc!r}") from None
