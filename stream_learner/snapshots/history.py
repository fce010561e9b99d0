"""Older versions of a model: the verified state at any version still on the snapshot topic.

A rollback restores the state of a chosen version; a replay rebuilds the state its snapshot
continued. Both read the topic backwards from its end (`SnapshotLog.newest_first`, with the
signature check of the reader) down to the newest full snapshot at or before the version wanted,
then fold that full snapshot and the deltas that continue it up to that version (`chain.load`, the
checks of the learner's restore and of serving).
"""

from __future__ import annotations

from collections.abc import Callable

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.scoring.spec import ModelSpec
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots.format import Chunk, Snapshot
from stream_learner.snapshots.log import SnapshotLog


def history_to(
    settings: Settings, version: int, verify: Callable[[Chunk], None] | None = None
) -> list[Snapshot]:
    """`read_back_to` on the model's snapshot topic (``model.name`` on ``snapshot.topic``)."""
    s = settings
    timeout = s.kafka.startup_timeout_seconds
    with SnapshotLog(s.kafka, s.snapshot.topic, s.model.name, timeout=timeout, verify=verify) as snapshots:
        return read_back_to(snapshots, version)


def read_back_to(snapshots: SnapshotLog, version: int) -> list[Snapshot]:
    """The verified snapshots from the newest full one at or before ``version`` to the end of the
    log, in log order (refused data is reported to the log's ``on_refused``)."""
    newer: list[Snapshot] = []
    for entry in snapshots.newest_first():
        if entry.snapshot is None:
            snapshots.on_refused(entry)
            continue
        newer.append(entry.snapshot)
        meta = entry.snapshot.meta
        if meta.kind == "FULL" and meta.version <= version:
            break
    return newer[::-1]


def find(history: list[Snapshot], version: int) -> Snapshot:
    """Snapshot ``version`` of ``history``; `SnapshotError` ("gap") when it is not there."""
    for snap in history:
        if snap.meta.version == version:
            return snap
    raise SnapshotError("gap", f"no verified snapshot v{version} on the topic (never written, or trimmed)")


def state_at(history: list[Snapshot], version: int) -> tuple[chains.Fold, ModelSpec]:
    """The verified state of ``version``, folded from ``history`` (as `read_back_to` returns it).
    `SnapshotError` when the version is missing or its chain is broken before it."""
    target = find(history, version)
    fulls = [s for s in history if s.meta.kind == "FULL" and s.meta.version <= version]
    if not fulls:
        raise SnapshotError("gap", f"no full snapshot at or before v{version} on the topic")
    start = history.index(fulls[-1])
    chain = chains.continuing(history[start], [s for s in history[start + 1 :] if s.meta.version <= version])
    if chain[-1] is not target:
        raise SnapshotError(
            "gap",
            f"v{version} does not continue v{fulls[-1].meta.version}: "
            f"the chain breaks after v{chain[-1].meta.version}",
        )
    return chains.load(chain)
