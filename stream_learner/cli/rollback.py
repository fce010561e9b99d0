"""``stream-learner rollback``: ask the active learner to return to an older version's model (or to
accept the model it has), and wait until a committed version says it did.

The request travels on the model's control topic (`stream_learner.kafka.control`), signed with
``snapshot.signing_key`` when it is set (a learner that verifies snapshots verifies requests the same
way, and with ``snapshot.require_signature`` refuses unsigned ones); the command then
follows the snapshot topic from where it ended when the request was sent. The first version that
records a control position past the request tells the outcome: it carries the rollback (applied),
or the learner took the request without rolling back (accepted, or refused: the learner's log says
why). Exit status 0 when applied or accepted; 1 when refused, when the version is not on the topic,
or when no active instance confirmed within ``--wait`` seconds (the request stays valid until it
expires, and the instance active then takes it).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from stream_learner.cli.common import EXIT_NOT_FOUND
from stream_learner.config import Settings
from stream_learner.errors import ConfigError, SnapshotError
from stream_learner.kafka.control import ControlRequest, control_topic, send
from stream_learner.snapshots import history, signing
from stream_learner.snapshots.format import SnapshotMeta
from stream_learner.snapshots.log import SnapshotLog


def with_model(settings: Settings, name: str | None) -> Settings:
    """``settings`` for the model named ``name`` (``--model``), or as they are."""
    if not name:
        return settings
    return settings.model_copy(update={"model": settings.model.model_copy(update={"name": name})})


def rollback(settings: Settings, args: argparse.Namespace) -> int:
    s = with_model(settings, args.model)
    verify, sign = signing.verifier(s.snapshot), signing.signer(s.snapshot)
    if sign is None and s.snapshot.require_signature:
        raise ConfigError(
            "snapshot.signing_key",
            "the learner requires signed requests; set STREAM_LEARNER_SNAPSHOT__SIGNING_KEY",
        )
    if args.accept:
        request = ControlRequest.new("accept", args.expires_after)
        asked = "accept the model as it is"
    else:
        try:
            history.find(history.history_to(s, args.to_version, verify), args.to_version)
        except SnapshotError as err:
            print(f"stream-learner: cannot roll back to v{args.to_version}: {err}", file=sys.stderr)
            return EXIT_NOT_FOUND
        request = ControlRequest.new("rollback", args.expires_after, args.to_version)
        asked = f"roll back to v{args.to_version}"
    timeout = s.kafka.startup_timeout_seconds
    with SnapshotLog(s.kafka, s.snapshot.topic, s.model.name, timeout=timeout, verify=verify) as snapshots:
        _, end = snapshots.bounds()
        offset = send(s, request, sign)
        print(f"request {request.request} ({asked}) sent to {control_topic(s)} at offset {offset}")
        if args.wait <= 0:
            return 0
        outcome = _outcome(snapshots, end, offset, request, args.wait)
    if outcome is None:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(request.expires_ms / 1000))
        print(
            f"stream-learner: no active learner confirmed request {request.request} within {args.wait:g} s; "
            f"it stays valid until {expires} and the instance active then takes it",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    result, meta = outcome
    if result == "applied":
        print(f"rolled back: v{meta.version} ({meta.kind.lower()}) carries the state of v{args.to_version}")
        return 0
    if result == "accepted":
        print(f"accepted: the quality gate's reference starts over from v{meta.version}")
        return 0
    print(
        f"stream-learner: the learner refused request {request.request} (v{meta.version} records it "
        "taken without a rollback; the learner's log says why)",
        file=sys.stderr,
    )
    return EXIT_NOT_FOUND


def _outcome(
    snapshots: SnapshotLog, start: int, offset: int, request: ControlRequest, wait: float
) -> tuple[str, SnapshotMeta] | None:
    """How the learner took ``request`` (written at ``offset`` of the control topic), from the
    first version after ``start`` on the snapshot topic that records a position past it."""
    stop = threading.Event()
    timer = threading.Timer(wait, stop.set)
    timer.start()
    try:
        for entry in snapshots.follow(start, stop):
            if entry.snapshot is None:
                continue
            meta = entry.snapshot.meta
            state = meta.state_dict()
            if state.get("rollback", {}).get("request") == request.request:
                return "applied", meta
            if state.get("control", {}).get("next", -1) > offset:
                return ("accepted" if request.action == "accept" else "refused"), meta
    finally:
        timer.cancel()
    return None
