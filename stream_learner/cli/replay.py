"""``stream-learner replay --version V``: train version V again from its inputs and compare the
result with V's payload byte for byte (`stream_learner.snapshots.replay`).

Exit status 0 when identical; 5 when it differs (the first tensor that differs is named); 1 when V
cannot be replayed (not on the topic, no lineage, count windows, or input offsets that retention
removed: the message says which).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from stream_learner.cli.common import EXIT_NOT_FOUND
from stream_learner.cli.rollback import with_model
from stream_learner.config import Settings
from stream_learner.errors import SnapshotError
from stream_learner.kafka.ranges import OffsetsGone
from stream_learner.snapshots import signing
from stream_learner.snapshots.replay import ReplayError, replay

#: The replayed state differs from the published one.
EXIT_DIFFERS = 5


def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    s = with_model(settings, args.model)
    try:
        report = replay(s, args.version, signing.verifier(s.snapshot))
    except (ReplayError, OffsetsGone, SnapshotError) as err:
        print(f"stream-learner: v{args.version} cannot be replayed: {err}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        base = f"v{report.base}" if report.base is not None else "a fresh model"
        print(
            f"v{report.version} ({report.kind.lower()}): {report.windows} windows, {report.events} events "
            f"trained again on {base}"
        )
        for note in report.notes:
            print(f"note: {note}")
        if report.identical:
            print(f"identical: v{report.version}'s payload and learner state are reproduced byte for byte")
        else:
            print(f"DIFFERS: {report.difference}")
    return 0 if report.identical else EXIT_DIFFERS
