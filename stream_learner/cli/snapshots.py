"""``stream-learner snapshots list|inspect|export`` and ``stream-learner recommend``: the committed
snapshots of a model, and what the newest one recommends. ``--form serving`` reads the serving form
(``serving.form_topic``) instead of the training snapshots; ``inspect`` of a training snapshot also
summarises the serving form of the same version when there is one."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from typing import Any

from stream_learner.cli.common import EXIT_NOT_FOUND, form_topic
from stream_learner.cli.export import export_command
from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.serving import ModelSubscriber
from stream_learner.snapshots import signing
from stream_learner.snapshots.format import Snapshot, describe_payload
from stream_learner.snapshots.gate import verdict_of
from stream_learner.snapshots.log import Entry, SnapshotLog
from stream_learner.snapshots.serving_form import GONE


def _snapshot_log(settings: Settings, args: argparse.Namespace, topic: str | None = None) -> SnapshotLog:
    name = args.model or settings.model.name
    verify = signing.verifier(settings.snapshot)
    timeout = settings.kafka.startup_timeout_seconds
    topic = topic or form_topic(settings, args)
    return SnapshotLog(settings.kafka, topic, name, timeout=timeout, verify=verify)


def snapshots(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "export":
        return export_command(settings, args)
    with _snapshot_log(settings, args) as snapshots:
        if args.action == "list":
            entries = list(itertools.islice(snapshots.newest_first(), args.last))
            for entry in reversed(entries):
                print(_entry_line(entry))
            if not entries:
                where = f"{form_topic(settings, args)} at {settings.kafka.bootstrap_servers}"
                print(f"no snapshots of {snapshots.key.decode()} on {where}")
            return 0
        for entry in snapshots.newest_first():
            snap = entry.snapshot
            if snap is not None and args.version in (None, snap.meta.version):
                try:
                    shown = _inspect(snap)
                    if snap.meta.form == "training":
                        shown["serving_form"] = _serving_form_of(settings, args, snap.meta.version)
                    print(json.dumps(shown, indent=2))
                except (SnapshotError, ValueError) as err:
                    print(f"stream-learner: v{snap.meta.version} cannot be shown: {err}", file=sys.stderr)
                    return EXIT_NOT_FOUND
                return 0
    print(f"stream-learner: no verified snapshot {args.version or ''} found", file=sys.stderr)
    return EXIT_NOT_FOUND


def _entry_line(entry: Entry) -> str:
    if entry.snapshot is None:
        return f"@{entry.offset!s:<8} refused: {entry.error}"
    m = entry.snapshot.meta
    ranges = " ".join(f"{r.partition}:[{r.first},{r.last}]" for r in m.offsets)
    base = f"<-v{m.base_version}" if m.base_version is not None else ""
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(m.created_ms / 1000))
    return (
        f"@{entry.offset!s:<8} v{m.version:<6} {m.kind.lower():5} {base:9} {created}Z "
        f"{len(entry.snapshot.payload):>11} B  windows [{m.window_start_ms}, {m.window_end_ms})  "
        f"offsets {ranges}{'  HELD' if verdict_of(m)[0] == 'held' else ''}"
    )


def _serving_form_of(settings: Settings, args: argparse.Namespace, version: int) -> dict[str, Any] | None:
    """A summary of the serving form of ``version`` (None when its topic holds none)."""
    topic = settings.serving.form_topic_for(settings.snapshot.topic)
    with _snapshot_log(settings, args, topic) as serving:
        for entry in serving.newest_first():
            snap = entry.snapshot
            if snap is not None and snap.meta.version <= version:
                return _summary(snap, topic) if snap.meta.version == version else None
    return None


def _summary(snap: Snapshot, topic: str) -> dict[str, Any]:
    """The serving form in brief: its kind, bytes, rows present (or changed) per field, weights' dtypes."""
    tensors = describe_payload(snap.payload)
    present = {n: shape[0] for n, (_, shape) in tensors.items() if n.count("/") == 1}
    return {
        "topic": topic,
        "kind": snap.meta.kind,
        "payload_bytes": len(snap.payload),
        "rows": {n.removeprefix("rows/"): k for n, k in present.items() if n.startswith("rows/")},
        "gone": {n.removeprefix(GONE): k for n, k in present.items() if n.startswith(GONE)},
        "weights": sorted({dtype for n, (dtype, _) in tensors.items() if "/model." in n}),
    }


def _inspect(snap: Snapshot) -> dict[str, Any]:
    m = snap.meta
    state = m.state_dict()
    learner = state.get("learner", {})
    if isinstance(learner.get("recent_items"), list):
        learner["recent_items"] = f"{len(learner['recent_items'])} item ids"
    return {
        **{k: v for k, v in vars(m).items() if k not in ("spec", "state", "offsets")},
        "offsets": [vars(r) for r in m.offsets],
        "spec": json.loads(m.spec),
        "state": state,
        "payload_bytes": len(snap.payload),
        "payload_sha256": hashlib.sha256(snap.payload).hexdigest(),
        "tensors": {
            name: [dtype, list(shape)] for name, (dtype, shape) in describe_payload(snap.payload).items()
        },
    }


def recommend(settings: Settings, args: argparse.Namespace) -> int:
    name = args.model or settings.model.name
    with ModelSubscriber(
        settings.kafka,
        form_topic(settings, args),
        name,
        verify_key=signing.verify_key(settings.snapshot),
        require_signature=settings.snapshot.require_signature,
    ) as subscriber:
        if subscriber.refresh() is None:
            print(
                f"stream-learner: no usable snapshot of {name} on {settings.snapshot.topic}", file=sys.stderr
            )
            return EXIT_NOT_FOUND
        candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
        best = subscriber.recommend(args.user, args.k, candidates)
    print(f"model {name} v{subscriber.version}, user {args.user}:")
    for rank, (item, score) in enumerate(best, 1):
        print(f"{rank:>3}  {item}  {score:.6f}")
    return 0


def keygen() -> int:
    """Print a new key pair: the private key for the learner's environment, the public for readers."""
    private, public = signing.generate()
    print(f"STREAM_LEARNER_SNAPSHOT__SIGNING_KEY={private}  # the learner's environment only (a Secret)")
    print(f"STREAM_LEARNER_SNAPSHOT__VERIFY_KEY={public}  # learners and readers (subscribers, CLI)")
    return 0
