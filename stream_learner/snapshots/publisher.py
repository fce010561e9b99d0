"""From a copy of the model state to a committed snapshot: version, kind, offset ranges, metadata.

The publisher keeps what the snapshot history needs between snapshots: the last version handed out,
the next offset per partition already handed out (where the next snapshot's ranges begin), the
window range and newest event time trained since the last snapshot, the quality gate's evidence
(`stream_learner.snapshots.gate`: each snapshot carries its verdict) and the windows it adds
(`stream_learner.snapshots.lineage`: what replay needs). Versions and ranges are assigned
on the polling thread, in order; encoding and the commit happen on the sink's thread, and
``on_committed`` (metrics) and the local checkpoint, when configured, follow the commit there.
With ``serving.publish_form`` every version also goes out in its serving form
(`stream_learner.snapshots.serving_form`), converted on the sink's thread, to
``serving.form_topic`` in the same transaction: the same version, kind, offsets and metadata.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import InitVar, dataclass, field, replace
from typing import Any, Protocol

from stream_learner.config import Settings
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import WindowResult
from stream_learner.scoring.spec import ModelSpec
from stream_learner.snapshots import serving_form
from stream_learner.snapshots.companion import Companion, Pending
from stream_learner.snapshots.format import (
    PartitionRange,
    Payload,
    Sign,
    SnapshotKind,
    SnapshotMeta,
    encode,
    encode_payload,
)
from stream_learner.snapshots.gate import Gate
from stream_learner.snapshots.lineage import Lineage
from stream_learner.snapshots.state import StateCopy

log = logging.getLogger(__name__)

#: Called after a commit with the snapshot's metadata and its messages (for a local checkpoint).
Checkpoint = Callable[[SnapshotMeta, Iterable[bytes]], None]
#: A message of a snapshot (`stream_learner.kafka.sink.Message`): keyed by the model, a (key, message)
#: pair of another model, or (topic, key, message) for another topic.
Message = bytes | tuple[bytes, bytes] | tuple[str, bytes, bytes]
#: Called after a commit with the snapshot's metadata and its payload size in bytes.
Committed = Callable[[SnapshotMeta, int], None]


class SnapshotSink(Protocol):
    """Where snapshots go (`stream_learner.kafka.sink.Sink`): their messages, committed together
    with the input offsets they include; ``committed`` runs after the commit."""

    def publish(
        self,
        chunks: Callable[[], Iterable[Message]],
        key: bytes,
        offsets: dict[int, int],
        group_metadata: object,
        committed: Callable[[], None],
    ) -> None: ...


@dataclass(frozen=True)
class Rollback:
    """What a rollback's snapshot records: the version whose state it restored, the request that
    asked for it (and the control topic's offset after it), and that version's gate state (the
    gate continues from it)."""

    to_version: int
    request: str
    control_next: int
    gate_state: dict[str, Any]


@dataclass(kw_only=True)
class Publisher:
    settings: Settings
    sink: SnapshotSink
    spec_json: str
    clock: Callable[[], float]
    on_committed: Committed = lambda meta, size: None
    version: int = 0
    committed_next: dict[int, int] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    sign: Sign | None = None  # signs every snapshot (`stream_learner.snapshots.signing.Signer`)
    last_result: WindowResult | None = None
    window_start_ms: int | None = None  # first window trained since the last snapshot
    window_end_ms: int | None = None  # end of the last window in the model (restored or trained)
    newest_event_ms: int = 0
    unpublished_since: float = 0.0  # wall time the oldest window not yet in a snapshot was trained
    control_next: int | None = None  # the next control request to read (`runtime.rollback`)
    control_published: int | None = field(init=False, default=None)  # in the last snapshot
    restored: InitVar[SnapshotMeta | None] = None  # the snapshot the model was restored from
    companion: Companion | None = None  # a student's snapshots, in the same transactions
    gate: Gate = field(init=False)
    lineage: Lineage = field(init=False)

    def __post_init__(self, restored: SnapshotMeta | None) -> None:
        self.gate = Gate(self.settings.serving)
        state = restored.state_dict() if restored is not None else {}
        if isinstance(state.get("gate"), dict):
            self.gate.restore(state["gate"])
        self.lineage = Lineage.of(self.settings, restored.version if restored is not None else None)
        control = state.get("control", {})
        if self.control_next is None and isinstance(control, dict) and "next" in control:
            self.control_next = self.control_published = int(control["next"])

    @property
    def up_to_date(self) -> bool:
        """The last trained window is in a snapshot already handed out."""
        return self.window_start_ms is None

    @property
    def control_moved(self) -> bool:
        """Control requests were taken since the last snapshot (it records where to read next)."""
        return self.control_next != self.control_published

    def trained(self, result: WindowResult, window: Window | None = None, batch_multiplier: int = 1) -> None:
        """Note a window the model has taken in (``window``: for the lineage, when known)."""
        self.gate.trained(result)
        if window is not None:
            self.lineage.trained(window, batch_multiplier)
        self.last_result = result
        self.window_end_ms = result.end_ms
        if self.window_start_ms is None:
            self.window_start_ms = result.start_ms
            self.unpublished_since = self.clock()
        self.newest_event_ms = max(self.newest_event_ms, result.newest_event_ms)

    def publish(
        self,
        state: StateCopy,
        frontier: dict[int, int],
        resume_state: dict[str, Any],
        group_metadata: object,
        rollback: Rollback | None = None,
    ) -> list[int]:
        """Hand ``state`` to the sink as the next version, to be committed with ``frontier`` (next
        offset per partition); a delta that carries the whole state too (`StateCopy.full`) is
        followed by the whole as a version of its own that adds no window
        (docs/decisions/delta-before-full.md). With no window trained since the last snapshot, the
        new version only moves the offsets on (past dead letters, late events and replays).
        ``rollback``: the state is that of an older version, restored on request (it passes the
        gate). Returns the versions handed out."""
        self._publish(state, frontier, resume_state, group_metadata, rollback)
        if state.full is None:
            return [self.version]
        whole = StateCopy(state.full, state.learner_state)
        self._publish(whole, frontier, resume_state, group_metadata, None)
        return [self.version - 1, self.version]

    def _publish(
        self,
        state: StateCopy,
        frontier: dict[int, int],
        resume_state: dict[str, Any],
        group_metadata: object,
        rollback: Rollback | None,
    ) -> None:
        extra: dict[str, Any] = {}
        evidence: dict[str, float] = {}
        if rollback is not None:
            self.control_next = rollback.control_next
            reason = f"rollback to v{rollback.to_version} (request {rollback.request})"
            gate = self.gate.overrule(reason, rollback.gate_state)
            self.lineage.rolled_back(rollback.to_version)
            extra["rollback"] = {"to_version": rollback.to_version, "request": rollback.request}
        else:
            gate, evidence = self.gate.judge()
        if self.control_next is not None:
            extra["control"] = {"next": self.control_next}
        self.control_published = self.control_next
        full_state = {"learner": state.learner_state, **resume_state, **extra, "gate": gate}
        full_state["lineage"] = self.lineage.take(self.version + 1)
        meta = self._meta(state.kind, frontier, full_state, evidence)
        companion, student_state = self.companion, state.companion
        student = companion.prepare(student_state, meta) if companion and student_state else None
        self.version = meta.version
        self.committed_next = dict(frontier)
        self.window_start_ms = None
        encoded: dict[str, Any] = {}
        max_bytes = self.settings.snapshot.max_message_bytes

        def chunks() -> Iterator[Message]:
            encoded["started"] = time.perf_counter()
            encoded["payload"] = payload = encode_payload(state.tensors)
            encoded["chunks"] = 0
            for message in encode(meta, payload, max_bytes, self.sign):
                encoded["chunks"] += 1
                yield message
            if student is not None:
                yield from student.messages()
            if self.settings.serving.publish_form:
                yield from self._serving_form(meta, state.tensors, encoded)

        self.sink.publish(
            chunks,
            self.settings.model.name.encode(),
            frontier,
            group_metadata,
            committed=lambda: self._committed(meta, encoded, student),
        )

    def _serving_form(
        self, meta: SnapshotMeta, tensors: dict[str, Any], encoded: dict[str, Any]
    ) -> Iterator[tuple[str, bytes, bytes]]:
        """The serving form's messages of the version ``meta`` describes (on the sink's thread)."""
        s = self.settings
        spec = ModelSpec.from_json(self.spec_json)
        payload = encode_payload(serving_form.convert(tensors, spec, s.serving.precision))
        encoded["serving_form"] = payload.size
        topic, key = s.serving.form_topic_for(s.snapshot.topic), s.model.name.encode()
        form = replace(meta, form="serving")
        for message in encode(form, payload, s.snapshot.max_message_bytes, self.sign):
            yield topic, key, message

    def _committed(self, meta: SnapshotMeta, encoded: dict[str, Any], student: Pending | None = None) -> None:
        """On the sink's thread, right after the commit."""
        if student is not None:
            student.committed()
        payload: Payload = encoded["payload"]
        self.on_committed(meta, payload.size)
        if meta.kind == "FULL" and 3 * payload.size > self.settings.snapshot.retention_bytes:
            log.warning(
                "a full snapshot is %d bytes: snapshot.retention_bytes (%d) keeps fewer than three of them",
                payload.size,
                self.settings.snapshot.retention_bytes,
            )
        log.info(
            "snapshot v%d (%s) committed: %d bytes in %d chunks%s, %.3f s",
            meta.version,
            meta.kind.lower(),
            payload.size,
            encoded["chunks"],
            f", its serving form {encoded['serving_form']} bytes" if "serving_form" in encoded else "",
            time.perf_counter() - encoded["started"],
        )
        if self.checkpoint is not None:
            self.checkpoint(meta, encode(meta, payload, self.settings.snapshot.max_message_bytes, self.sign))

    def _meta(
        self, kind: SnapshotKind, frontier: dict[int, int], state: dict[str, Any], evidence: dict[str, float]
    ) -> SnapshotMeta:
        topic = self.settings.input.topic
        r = None if self.up_to_date else self.last_result
        end = self.window_end_ms if self.window_end_ms is not None else 0
        metrics = (
            {}
            if r is None
            else {
                "validation_loss": r.evaluation.loss,
                "validation_auc": r.evaluation.auc,
                "events": float(r.events),
                **(
                    {"holdout_loss": r.holdout.loss, "holdout_auc": r.holdout.auc}
                    if r.holdout is not None
                    else {}
                ),
            }
        )
        metrics.update(evidence)
        ranges = tuple(
            PartitionRange(topic, p, self.committed_next.get(p, nxt), nxt - 1)
            for p, nxt in sorted(frontier.items())
        )
        return SnapshotMeta(
            model_name=self.settings.model.name,
            version=self.version + 1,
            kind=kind,
            base_version=self.version if kind == "DELTA" else None,
            spec=self.spec_json,
            created_ms=int(self.clock() * 1000),
            window_start_ms=self.window_start_ms if self.window_start_ms is not None else end,
            window_end_ms=end,
            newest_event_ms=self.newest_event_ms,
            offsets=ranges,
            metrics=metrics,
            state=json.dumps(state),
        )
