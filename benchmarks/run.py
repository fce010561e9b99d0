"""Run every benchmark, one process each, against the local broker (or STREAM_LEARNER_BENCH_BOOTSTRAP).

    .venv/bin/python -m benchmarks.run                  # all; about 70 minutes on 2 cores
    .venv/bin/python -m benchmarks.run e2e ingest       # some

Each writes its own section of benchmarks/results/latest.json; then `benchmarks.figures` renders the
figures the docs quote from it. The quality and real-data benchmarks
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
    "freshness_distributed",
    "soak",
    "quality",
    "real",
    "distributed",
    "catchup",
    "serving",
    "serving_memory",
    "compression",
    "pruning",
    "distillation",
]
#: Benchmarks that are a module run with arguments (the others: ``python -m benchmarks.NAME``).
ARGS = {
    "freshness_distributed": ["benchmarks.freshness", "--workers", "2"],
    "pruning": ["benchmarks.pruning", "--rounds", "3"],  # as recorded: the time is a median of rounds
}


def main() -> int:
    chosen = sys.argv[1:] or ALL
    unknown = sorted(set(chosen) - set(ALL))
    if unknown:
        print(f"unknown benchmarks {unknown}; choose from {ALL}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"== benchmarks.{name}", flush=True)
        command = ARGS.get(name, [f"benchmarks.{name}"])
        if subprocess.run([sys.executable, "-m", *command], check=False).returncode != 0:
            failed.append(name)
    subprocess.run([sys.executable, "-m", "benchmarks.figures"], check=False)  # the docs' figures anew
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
