"""Replay: train a published version again from its inputs and check that the result is the same,
byte for byte. An audit of which events made a model.

For version V (`replay`): read its snapshot and its ``lineage`` (`stream_learner.snapshots.lineage`);
rebuild the state it continued (the ``base`` version, folded from the snapshot topic as a restart
would, or a fresh model); read the input topic again from V's first offsets up to the windows'
``until`` bounds, decode it as the learner did, cut the windows V recorded (each the valid events of
its time range below its bounds, in (time, partition, offset) order) and let a learner built from the
settings V recorded train them; then copy the state as V was copied (whole or as a delta) and
compare its safetensors payload with V's, then the learner state. On the CPU with
``train.deterministic`` and the thread count V recorded, the payloads are identical; otherwise the
report names the first tensor (in name order) that differs.

The codec's clock-dependent checks (too old, too far in the future) judge each event against V's
creation time rather than the moment it was first read; only an event within seconds of those
bounds could be judged otherwise, and the comparison would then say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_learner.config import Settings
from stream_learner.errors import StreamLearnerError
from stream_learner.ingest.codec import make_decoder
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import Window
from stream_learner.kafka.ranges import read_ranges
from stream_learner.learning.learner import Learner
from stream_learner.snapshots import history
from stream_learner.snapshots.format import Chunk, Snapshot, encode_payload
from stream_learner.snapshots.lineage import TRAINING_SECTIONS
from stream_learner.snapshots.state import StateCopier, StateCopy


class ReplayError(StreamLearnerError):
    """A version that cannot be replayed, and why."""


@dataclass
class Report:
    """The outcome of a replay."""

    version: int
    kind: str
    base: int | None
    windows: int = 0
    events: int = 0  # events trained again (the windows' events)
    identical: bool = False
    difference: str | None = None  # the first difference found, when not identical
    notes: list[str] = field(default_factory=list)


def replay(settings: Settings, version: int, verify: Callable[[Chunk], None] | None = None) -> Report:
    """Replay ``version`` of ``model.name`` (see the module docstring); ``verify``: the signature
    check of the snapshots read."""
    snaps = history.history_to(settings, version, verify)
    target = history.find(snaps, version)
    lineage = _lineage(target)
    base = lineage["base"]
    report = Report(version, target.meta.kind, base)
    replayed = _settings(settings, lineage, report)
    learner = Learner(replayed)
    layout: dict[str, tuple[int, ...]] = {}
    if base is not None:
        if not any(s.meta.kind == "FULL" and s.meta.version <= base for s in snaps):
            snaps = history.history_to(settings, base, verify)
        fold, spec = history.state_at(snaps, base)
        if spec != learner.spec:
            raise ReplayError(f"v{base} has model spec {spec}, but v{version} recorded {learner.spec}")
        learner.restore(fold.tensors, fold.meta.state_dict().get("learner", {}))
        layout = {n: tuple(t.shape) for n, t in fold.tensors.items()}
    elif lineage["origin"] == "warm_start":
        raise ReplayError(
            f"v{version} continues a model warm-started from a file, which replay cannot rebuild"
        )
    for window, batch_multiplier in _windows(replayed, target, lineage["windows"]):
        learner.trainer.batch_multiplier = batch_multiplier
        learner.process(window)
        report.windows += 1
        report.events += len(window)
    full = target.meta.kind == "FULL"
    copy = StateCopier(learner, full_every=2, since_full=None if full else 0, layout=layout).copy()
    report.difference = _difference(copy, target)
    report.identical = report.difference is None
    return report


def _lineage(target: Snapshot) -> dict[str, Any]:
    lineage = target.meta.state_dict().get("lineage")
    if not isinstance(lineage, dict):
        raise ReplayError(f"v{target.meta.version} records no lineage (written by an older learner)")
    if any(w.get("until") is None for w in lineage["windows"]):
        raise ReplayError(
            f"v{target.meta.version} trained count windows, whose contents depend on the arrival "
            "order of partitions; only event-time windows replay"
        )
    return lineage


def _settings(settings: Settings, lineage: dict[str, Any], report: Report) -> Settings:
    """The configuration (Kafka, input format) with the training sections the version recorded,
    on the CPU with its thread count."""
    if lineage["device"] != "cpu" or not lineage["deterministic"]:
        report.notes.append(
            f"trained on {lineage['device']} with train.deterministic={lineage['deterministic']}: "
            "identical bytes are expected only on the CPU in deterministic mode"
        )
    recorded = lineage["settings"]
    update: dict[str, Any] = {}
    for name in TRAINING_SECTIONS:
        section = type(getattr(settings, name))
        values = dict(recorded[name])
        if name == "train":
            values.update(device="cpu", threads=int(lineage["threads"]))
        update[name] = section.model_validate(values)
    return settings.model_copy(update=update)


def _windows(
    settings: Settings, target: Snapshot, records: list[dict[str, Any]]
) -> Iterable[tuple[Window, int]]:
    """The windows ``target`` recorded, cut from the input read again, with their batch multipliers."""
    if not records:
        return
    topic = settings.input.topic
    first = {r.partition: r.first for r in target.meta.offsets if r.topic == topic}
    until: dict[int, int] = {}
    for record in records:
        for p, bound in record["until"].items():
            until[int(p)] = max(until.get(int(p), 0), int(bound))
    lo, hi = min(r["start_ms"] for r in records), max(r["end_ms"] for r in records)
    decoder = make_decoder(settings, lambda: target.meta.created_ms / 1000)
    parts = []
    for messages in read_ranges(settings, {p: (first.get(p, u), u) for p, u in until.items()}):
        batch = decoder.decode(messages).batch
        parts.append(batch.take((batch.timestamp_ms >= lo) & (batch.timestamp_ms < hi)))
    events = EventBatch.concat(parts) if parts else EventBatch.empty(len(settings.model.context_fields))
    for record in records:
        bound = {int(p): int(o) for p, o in record["until"].items()}
        keep = (events.timestamp_ms >= record["start_ms"]) & (events.timestamp_ms < record["end_ms"])
        below = np.zeros(len(events), dtype=bool)
        for p, o in bound.items():
            below |= (events.partition == p) & (events.offset >= first.get(p, o)) & (events.offset < o)
        mine = events.take(keep & below).sorted_by_time()
        yield (
            Window(record["start_ms"], record["end_ms"], mine, {}, "watermark", bound),
            int(record["batch_multiplier"]),
        )


def _difference(copy: StateCopy, target: Snapshot) -> str | None:
    """None when the state copied equals ``target`` (payload bytes, then learner state), else the
    first difference."""
    if encode_payload(copy.tensors).tobytes() != target.payload:
        return _first_tensor_difference(copy.tensors, target.tensors())
    theirs = target.meta.state_dict().get("learner", {})
    ours = json.loads(json.dumps(copy.learner_state))
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            return (
                f"learner state {key!r}: replayed {ours.get(key)!r:.200}, published {theirs.get(key)!r:.200}"
            )
    return None


def _first_tensor_difference(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> str:
    for name in sorted(set(ours) | set(theirs)):
        if name not in theirs:
            return f"tensor {name}: replayed, but not in the published payload"
        if name not in ours:
            return f"tensor {name}: in the published payload, not replayed"
        a, b = ours[name], theirs[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"tensor {name}: replayed {a.dtype} {tuple(a.shape)}, published {b.dtype} {tuple(b.shape)}"
        if a.tobytes() != b.tobytes():
            count = int((a != b).sum())
            gap = float(np.abs(a.astype(np.float64) - b).max()) if a.dtype.kind == "f" else float("nan")
            return f"tensor {name}: {count} of {a.size} values differ (largest difference {gap:.3g})"
    return "the payloads differ in their layout only"
