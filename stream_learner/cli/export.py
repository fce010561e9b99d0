"""``stream-learner snapshots export --format onnx [--version V] --output FILE``: a verified version
of a model (its chain folded as serving folds it) as an ONNX graph (`stream_learner.serving.export`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream_learner.cli.common import EXIT_NOT_FOUND
from stream_learner.config import Settings
from stream_learner.errors import ConfigError, SnapshotError
from stream_learner.serving import export
from stream_learner.snapshots import signing
from stream_learner.snapshots.history import read_back_to, state_at
from stream_learner.snapshots.log import SnapshotLog


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    s = settings
    timeout = s.kafka.startup_timeout_seconds
    verify = signing.verifier(s.snapshot)
    with SnapshotLog(s.kafka, s.snapshot.topic, s.model.name, timeout=timeout, verify=verify) as snapshots:
        version = args.version
        if version is None:
            version = next((e.snapshot.meta.version for e in snapshots.newest_first() if e.snapshot), None)
        try:
            if version is None:
                raise SnapshotError("gap", f"no verified snapshot of {s.model.name} on {s.snapshot.topic}")
            fold, spec = state_at(read_back_to(snapshots, version), version)
        except SnapshotError as err:
            print(f"stream-learner: cannot export v{version}: {err}", file=sys.stderr)
            return EXIT_NOT_FOUND
    try:
        model = export.build(spec, fold.tensors, fold.meta)
    except ImportError as exc:
        raise ConfigError("--format", str(exc)) from None
    output = Path(args.output)
    export.save(model, output)
    fields = ", ".join(f.name for f in spec.fields)
    inputs = f" and inputs (n, {spec.count_inputs}) float32" if spec.count_inputs else ""
    print(
        f"exported {s.model.name} v{version} ({spec.kind}) to {output}: rows (n, {len(spec.fields)}) int64 "
        f"[{fields}]{inputs} -> logit, score (docs/snapshot-format.md)"
    )
    return 0
