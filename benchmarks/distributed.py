"""The distributed job on this machine: events/s with 1 and 2 ranks, memory of the id tables per
rank, and the bytes each rank sends per training step.

    .venv/bin/python -m benchmarks.distributed                 # all three, about 8 minutes on 2 cores
    .venv/bin/python -m benchmarks.distributed --only memory

- **throughput**: one backfilled topic (4 partitions, the default model, 2^18 rows per table),
  learned end to end by ``stream-learner run`` as one process, as a 1-rank job and as a 2-rank job
  (torchrun, as ``--workers N`` spawns it), and one process and two ranks again with a global
  mini-batch of 8192; three rounds, the five jobs in turns within each, and the median round of each
  job is its figure (benchmarks/rounds.py: the machine is shared and its speed drifts). The
  rate is the events over the time from the last rank becoming active (consuming starts) to the log
  line of the window in which the job's trained events reach the count; a trailing event per
  partition closes the last window on the watermark (benchmarks/timing.py), so the idle timeout is
  not counted, and neither is start-up (torch import, rendezvous, restore).
- **memory**: the id tables of the default model with 2^20 and 2^22 rows per table, built by one
  and by two ranks (torchrun), one window trained (so the optimiser's per-row state exists): the
  bytes of every table's weights and row-aligned optimiser state on each rank, and the growth of the
  rank's resident memory from before the model was built.
- **traffic**: on two ranks, one window of 65,536 synthetic events with the default model and
  mini-batches of 1024: the bytes each rank hands to every collective per step, by kind (row ids,
  rows, row gradients, the dense all-reduce, the control plane).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.kafka_env import bootstrap, delete_topics, new_topic
from benchmarks.results import record
from benchmarks.rounds import median
from benchmarks.timing import produce_trailer
from stream_learner.config import ModelSettings, Settings
from stream_learner.tools.produce import produce_synthetic

PARTITIONS = 4
EVENTS = 300_000
ROUNDS = 3
#: One process, one rank, two ranks at the default global mini-batch (1024); then at 8192, where a
#: step's computation outweighs its collectives (docs/distributed.md, scaling model).
RUNS = ("process", "1-rank", "2-ranks", "process/8192", "2-ranks/8192")
WINDOW_LINE = re.compile(r"^(\S+ \S+) INFO stream_learner.runtime.report: window \[\d+, \d+\) events=(\d+) ")
ACTIVE_LINE = re.compile(r"^(\S+ \S+) INFO stream_learner.runtime.(?:app|distributed.rank): active:")


def _at(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _toml(settings: dict[str, dict[str, Any]]) -> str:
    return "\n".join(
        f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
        for section, values in settings.items()
    )


def job_rate(
    address: str,
    topic: str,
    events: int,
    how: str,
    workdir: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Events/s of one run over ``topic`` (``how``: process, 1-rank or 2-ranks, with ``/B`` the
    global mini-batch B instead of the default), from its log; ``overrides``: settings (section ->
    values) over this benchmark's."""
    how, _, batch = how.partition("/")
    name = f"bench-dist-{uuid.uuid4().hex[:8]}"
    values: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": address},
        "input": {"topic": topic, "group_id": name},
        "window": {"size_seconds": 1.0, "allowed_lateness_seconds": 0.0, "idle_timeout_seconds": 1.0},
        "dead_letter": {"topic": f"{name}.dlq"},
        "snapshot": {"topic": f"{name}.snapshots", "every_windows": 10},
        "model": {"name": name},
        "train": {"batch_size": int(batch or 1024)},
        "metrics": {"port": 0},
    }
    for section, changes in (overrides or {}).items():
        values[section].update(changes)
    config = workdir / f"{name}.toml"
    config.write_text(_toml(values))
    base = [sys.executable, "-m", "stream_learner", "run", "--config", str(config), "--exit-when-idle"]
    if how == "process":
        cmd = base
    else:
        ranks = int(how.split("-")[0])
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "-m", "stream_learner", "run", "--config", str(config), "--exit-when-idle",
        ]  # fmt: skip
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    if how != "process":  # the launcher's split of the CPUs: its share less one for polling, at least 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(how[0]) - 1)))
    started = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    finally:
        delete_topics(address, [f"{name}.snapshots", f"{name}.dlq", f"{name}.snapshots.control"])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    active = [_at(m[1]) for line in lines if (m := ACTIVE_LINE.match(line))]
    trained, end = 0, None
    seen: set[str] = set()
    for line in lines:
        m = WINDOW_LINE.match(line)
        if m and line[24:] not in seen:  # every rank logs every (job-wide) window once
            seen.add(line[24:])
            trained += int(m[2])
            if trained >= events:
                end = _at(m[1])
                break
    assert end is not None, f"{how}: the job trained {trained} of {events} events"
    return {
        "events_per_second": round(events / (end - max(active))),
        "startup_seconds": round(max(active) - started, 2),
    }


def throughput(address: str, events: int, rounds: int = ROUNDS) -> dict[str, Any]:
    topic = new_topic(address, "distributed", PARTITIONS)
    settings = Settings.model_validate({"kafka": {"bootstrap_servers": address}, "input": {"topic": topic}})
    runs: dict[str, list[dict[str, float]]] = {how: [] for how in RUNS}
    try:
        produce_synthetic(settings.kafka, topic, events, rate=10_000, backfill=True)
        produce_trailer(settings, PARTITIONS)
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(rounds):
                for how, done in runs.items():
                    done.append(job_rate(address, topic, events, how, Path(tmp)))
                    print(f"{how:12s}: {done[-1]['events_per_second']:8,d} events/s", flush=True)
    finally:
        delete_topics(address, [topic])
    return {
        "events": events,
        "partitions": PARTITIONS,
        "model": f"{ModelSettings().kind}, 2^18 rows per table, window 1 s, snapshot every 10 windows, "
        "batch 1024 unless /B",
        "events_per_second": {
            how: round(median([r["events_per_second"] for r in done])) for how, done in runs.items()
        },
        "rounds": runs,
    }


def _torchrun(ranks: int, *args: str) -> list[dict[str, Any]]:
    """Run ``python -m benchmarks.distributed --rank-task ...`` on ``ranks`` ranks; their JSON reports."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "-m", "benchmarks.distributed", "--rank-task", *args, "--out", tmp,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=900)
        return [json.loads((Path(tmp) / f"{r}.json").read_text()) for r in range(ranks)]


def memory() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rows in (1 << 20, 1 << 22):
        for ranks in (1, 2):
            reports = _torchrun(ranks, "memory", str(rows))
            key = f"2^{rows.bit_length() - 1} rows, {ranks} rank{'s' * (ranks > 1)}"
            out[key] = {
                "table_bytes_per_rank": [r["table_bytes"] for r in reports],
                "rss_growth_bytes_per_rank": [r["rss_growth"] for r in reports],
            }
            gib = [round(b / 2**30, 3) for b in out[key]["table_bytes_per_rank"]]
            print(f"{key:22s}: tables {gib} GiB per rank", flush=True)
    return out


def traffic() -> dict[str, Any]:
    reports = _torchrun(2, "traffic")
    for r in reports:
        print(f"rank {r['rank']}: {r['bytes_per_step']} bytes per step", flush=True)
    return {"ranks": 2, "events": 1 << 16, "batch_size": 1024, "per_rank": reports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["throughput", "memory", "traffic"])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="throughput: rounds of the jobs in turns")
    parser.add_argument("--rank-task", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_task:
        from benchmarks.distributed_rank import run

        run(args.rank_task, Path(args.out))
        return
    if args.only in (None, "memory"):
        record("distributed_memory", {"id_tables": memory()})
    if args.only in (None, "traffic"):
        record("distributed_traffic", traffic())
    if args.only in (None, "throughput"):
        record("distributed_throughput", throughput(bootstrap(), args.events, args.rounds))


if __name__ == "__main__":
    main()
