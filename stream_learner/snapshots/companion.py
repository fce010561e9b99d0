"""A student's snapshots beside the model's: the same transactions, the same offsets, its own versions.

A student (`stream_learner.learning.student`) is published as a model of its own name on the snapshot
topic, so that `ModelSubscriber(..., model_name=<student>)` and ``stream-learner serve`` serve it as
they serve any model. `Companion` keeps its history between snapshots (the last version handed out)
and turns a copy of its state (`StateCopy.companion`) into its messages: each version with the offset
ranges, window range and newest event time of the model's snapshot it travels with, keyed by the
student's name and signed by the same signer. The publisher yields them after the model's messages,
in the model's transaction: both commit, with the input offsets, or neither does (exactly-once holds
for both). A copy that is a delta with the whole state too gives two versions, the whole one adding
no offsets (as the model's do). With ``serving.publish_form`` each version goes to the serving
form's topic too, in its serving form (`stream_learner.snapshots.serving_form`), as the model's do.
The student is not judged by the quality gate.

`restore_companion` restores the student on start: its newest chain that loads, when that chain ends
at the same input offsets as the model restored (then both continue from there). Otherwise (no
chain, a chain behind or ahead of the model, another spec, nothing that verifies) the student starts
fresh beside the restored model, its versions continuing above its newest on the topic, its next
snapshot a full one; the log says which and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.scoring.spec import ModelSpec
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots import serving_form
from stream_learner.snapshots.format import (
    Chunk,
    PartitionRange,
    Sign,
    SnapshotKind,
    SnapshotMeta,
    encode,
    encode_payload,
)
from stream_learner.snapshots.log import Entry, SnapshotLog
from stream_learner.snapshots.serving_form import Precision
from stream_learner.snapshots.state import StateCopy

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Companion:
    """The student's snapshot history on the publishing side."""

    name: str
    spec_json: str
    max_message_bytes: int
    sign: Sign | None = None
    version: int = 0  # the last version handed out
    form_topic: str | None = None  # with ``serving.publish_form``: where the serving form goes
    precision: Precision = "int8"  # the serving form's

    def prepare(self, state: StateCopy, teacher: SnapshotMeta) -> Pending:
        """The student's version(s) for ``state``, beside the model's snapshot ``teacher`` (on the
        polling thread, where versions are handed out in order)."""
        parts: list[tuple[SnapshotKind, dict[str, np.ndarray]]] = [(state.kind, state.tensors)]
        if state.full is not None:  # the whole state after its delta: a version that adds no offsets
            parts.append(("FULL", state.full))
        versions = []
        for i, (kind, tensors) in enumerate(parts):
            ranges = (
                teacher.offsets if i == 0 else tuple(replace(r, first=r.last + 1) for r in teacher.offsets)
            )
            versions.append((self._meta(kind, state.learner_state, teacher, ranges), tensors))
            self.version += 1
        return Pending(versions, self)

    def _meta(
        self,
        kind: SnapshotKind,
        learner: dict[str, Any],
        teacher: SnapshotMeta,
        ranges: tuple[PartitionRange, ...],
    ) -> SnapshotMeta:
        validation = learner.get("validation", {})
        metrics = (
            {"validation_loss": validation["loss"], "validation_auc": validation["auc"]} if validation else {}
        )
        state = {"learner": learner, "teacher": {"model": teacher.model_name, "version": teacher.version}}
        return SnapshotMeta(
            model_name=self.name,
            version=self.version + 1,
            kind=kind,
            base_version=self.version if kind == "DELTA" else None,
            spec=self.spec_json,
            created_ms=teacher.created_ms,
            window_start_ms=teacher.window_start_ms,
            window_end_ms=teacher.window_end_ms,
            newest_event_ms=teacher.newest_event_ms,
            offsets=ranges,
            metrics=metrics,
            state=json.dumps(state),
        )


@dataclass(frozen=True)
class Pending:
    """A student's versions handed out and waiting for the model's transaction."""

    versions: list[tuple[SnapshotMeta, dict[str, np.ndarray]]]
    companion: Companion
    sizes: list[int] = field(default_factory=list)

    def messages(self) -> Iterator[tuple[bytes, bytes] | tuple[str, bytes, bytes]]:
        """(key, message) of every chunk of every version, and (topic, key, message) of its serving
        form when there is one (on the sink's thread)."""
        c = self.companion
        key = c.name.encode()
        for meta, tensors in self.versions:
            payload = encode_payload(tensors)
            self.sizes.append(payload.size)
            for message in encode(meta, payload, c.max_message_bytes, c.sign):
                yield key, message
            if c.form_topic is not None:
                spec = ModelSpec.from_json(c.spec_json)
                small = encode_payload(serving_form.convert(tensors, spec, c.precision))
                for message in encode(replace(meta, form="serving"), small, c.max_message_bytes, c.sign):
                    yield c.form_topic, key, message

    def committed(self) -> None:
        for (meta, _), size in zip(self.versions, self.sizes, strict=False):
            log.info(
                "snapshot %s v%d (%s) committed: %d bytes",
                meta.model_name,
                meta.version,
                meta.kind.lower(),
                size,
            )


class Restorable(Protocol):
    """What the student restore loads into (`learning.student.Student`)."""

    name: str
    spec: ModelSpec

    def restore(self, tensors: Any, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class CompanionStart:
    """Where the student stands after `restore_companion`."""

    version: int  # its newest version on the topic: its next snapshot is version + 1
    since_full: int | None = None  # deltas since its full snapshot restored; None: the next is full
    layout: dict[str, tuple[int, ...]] = field(default_factory=dict)
    restored: bool = False


def restore_companion(
    settings: Settings,
    student: Restorable,
    teacher: SnapshotMeta | None,
    verifier: Callable[[Chunk], None] | None = None,
    on_refused: Callable[[SnapshotError], None] | None = None,
) -> CompanionStart:
    """Restore ``student`` from its newest chain when that ends at the offsets of ``teacher`` (the
    model's snapshot restored; None: the model starts fresh, and so does the student)."""
    s, name = settings, student.name
    refused = on_refused or (lambda err: None)

    def refused_entry(entry: Entry) -> None:
        assert entry.error is not None
        log.warning("refused snapshot data of %s at offset %s: %s", name, entry.offset, entry.error)
        refused(entry.error)

    timeout = s.kafka.startup_timeout_seconds
    with SnapshotLog(s.kafka, s.snapshot.topic, name, refused_entry, timeout, verifier) as snapshots:
        for chain in snapshots.chains() if teacher is not None else ():
            assert teacher is not None
            try:
                fold, spec = chains.load(chain)
            except SnapshotError as err:
                log.warning("refused snapshot %s v%d: %s", name, chain[0].meta.version, err)
                refused(err)
                continue
            meta = fold.meta
            if spec != student.spec:
                log.warning("student %s v%d is of another model spec; it starts fresh", name, meta.version)
                break
            if meta.resume_offsets() != teacher.resume_offsets():
                log.warning(
                    "student %s v%d ends at offsets %s, the model (v%d) at %s: the student starts fresh",
                    name, meta.version, meta.resume_offsets(), teacher.version, teacher.resume_offsets(),
                )  # fmt: skip
                break
            try:
                student.restore(fold.tensors, meta.state_dict().get("learner", {}))
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                log.warning("student %s v%d does not restore (%r): it starts fresh", name, meta.version, exc)
                refused(SnapshotError("state", f"v{meta.version}: its state does not restore: {exc!r}"))
                break
            version = max(snapshots.newest_version or 0, meta.version)
            log.info("restored student %s v%d beside model v%d", name, meta.version, teacher.version)
            return CompanionStart(
                version,
                since_full=fold.applied - 1 if meta.version == version else None,
                layout={n: tuple(t.shape) for n, t in fold.tensors.items()},
                restored=True,
            )
        if snapshots.newest_version is None:  # not read yet: read back to the newest verified one
            next((e for e in snapshots.newest_first() if e.snapshot is not None), None)
        newest = snapshots.newest_version or 0
    log.info("student %s starts fresh after v%d", name, newest)
    return CompanionStart(newest)
