"""Run every benchmark, one process each, against the local broker (or STREAM_LEARNER_BENCH_BOOTSTRAP).

    .venv/bin/python -m benchmarks.run                  # all; about 40 minutes on 2 cores
    .venv/bin/python -m benchmarks.run e2e ingest       # some

Each writes its own section of benchmarks/results/latest.json. The quality and real-data benchmarks
need the ``bench`` extra (river, vowpalwabbit, matplotlib): ``pip install -e '.[bench]'``; the
real-data one downloads MovieLens 100K (the RecBole wheel) into .cache/ on its first run.
"""

from __future__ import annotations

import subprocess
import sys

ALL = [
    "e2e",
    "ingest",
    "train_speed",
    "snapshot",
    "freshness",
    "soak",
    "quality",
    "real",
    "distributed",
    "catchup",
]


def main() -> int:
    chosen = sys.argv[1:] or ALL
    unknown = sorted(set(chosen) - set(ALL))
    if unknown:
        print(f"unknown benchmarks {unknown}; choose from {ALL}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"== benchmarks.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
