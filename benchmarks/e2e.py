"""The learner's end-to-end events/s against raw consume and ingest alone, same topic, same run.

    .venv/bin/python -m benchmarks.e2e --events 400000
    .venv/bin/python -m benchmarks.e2e --device cuda          # recorded as e2e_cuda (benchmarks/gpu.sh)

Raw: a bare consumer reads every message of the topic (value() touched, nothing else), timed after its
first batch. Ingest: the learner's source, decoder and windower without training
(benchmarks/ingest.py). Learner: the full job with its default model and settings (decode, validate,
window, score, train, snapshot, commit) from its first consumed event to the last event trained (see
benchmarks/timing.py: the last window closes on the watermark, not on idleness), with the stage
profile of benchmarks/stages.py; start-up (lease, restore) is reported separately. Ingest alone
and the learner run ``--rounds`` times, alternated, each round on a topic of its own (the machine's
speed drifts by tens of percent over minutes): the figures are the medians (the learner's median
round gives the start-up and the stage profile), and every round is recorded.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import numpy as np
import torch
from confluent_kafka import Consumer, TopicPartition

from benchmarks.ingest import ingest
from benchmarks.kafka_env import bootstrap, delete_topics, new_topic, outputs
from benchmarks.results import record
from benchmarks.stages import StageProfile
from benchmarks.timing import learner_rate
from stream_learner.config import Settings
from stream_learner.tools.produce import produce_synthetic

PARTITIONS = 3
#: Events/s end to end on the two-core development machine (issue 10).
TARGET = 150_000


def raw_consume_rate(address: str, topic: str, events: int) -> float:
    """Events/s of a bare consumer, timed from the end of its first batch (which is not counted)."""
    consumer = Consumer(
        {
            "bootstrap.servers": address,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 << 20,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    first, seen, started = 0, 0, 0.0
    while seen < events:
        batch = [m for m in consumer.consume(10_000, 1.0) if m.error() is None]
        for msg in batch:
            msg.value()
        seen += len(batch)
        if batch and not started:
            first, started = len(batch), time.perf_counter()
    elapsed = time.perf_counter() - started
    consumer.close()
    return (seen - first) / elapsed


def learner_settings(address: str, topic: str, device: str | None = None) -> Settings:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    return Settings.model_validate(
        {
            **({"train": {"device": device}} if device else {}),
            "kafka": {"bootstrap_servers": address},
            "input": {"topic": topic, "group_id": name},
            "window": {"size_seconds": 1.0, "allowed_lateness_seconds": 0.0, "idle_timeout_seconds": 1.0},
            "dead_letter": {"topic": f"{name}.dlq"},
            "snapshot": {"topic": f"{name}.snapshots", "every_windows": 10},
            "model": {"name": name},
            "metrics": {"port": 0},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="ingest-only and learner runs, alternated (medians reported)"
    )
    parser.add_argument(
        "--device", help="train.device (default: the default setting); recorded as e2e_<device type>"
    )
    args = parser.parse_args()
    address = bootstrap()
    rounds: list[dict[str, Any]] = []
    raw = 0.0
    for r in range(args.rounds):  # alternated, so that a machine that slows down slows both
        topic = new_topic(address, "e2e", PARTITIONS)  # each round its own topic, model and group
        settings = learner_settings(address, topic, args.device)
        try:
            produce_synthetic(settings.kafka, topic, args.events, rate=10_000, backfill=True)
            if r == 0:
                raw = raw_consume_rate(address, topic, args.events)
            ingest_only = ingest(settings, args.events)["events_per_s"]
            with StageProfile().active() as profile:
                learner = learner_rate(settings, args.events, PARTITIONS, profile)
            rounds.append({"ingest": ingest_only, **learner})
        finally:
            delete_topics(address, [topic, *outputs(settings)])
    by_rate = sorted(rounds, key=lambda r: r["events_per_second"])
    learner = by_rate[len(by_rate) // 2]  # the median round: its start-up and stage profile
    rate = learner["events_per_second"]
    ingest_only = float(np.median([r["ingest"] for r in rounds]))
    result = {
        "events": args.events,
        "partitions": PARTITIONS,
        "rounds": [
            {
                "ingest_events_per_second": round(r["ingest"]),
                "learner_events_per_second": round(r["events_per_second"]),
                "learner_vs_ingest": round(r["events_per_second"] / r["ingest"], 4),
            }
            for r in rounds
        ],
        "raw_consume_events_per_second": round(raw),
        "ingest_events_per_second": round(ingest_only),
        "learner_events_per_second": round(rate),
        "learner_startup_seconds": round(learner["startup_seconds"], 2),
        "lease_to_first_event_seconds": round(learner["lease_to_first_event_seconds"], 3),
        "learner_vs_raw": round(rate / raw, 4),
        "learner_vs_ingest": round(rate / ingest_only, 4),
        "targets": {"events_per_second": TARGET, "vs_ingest": 0.5, "lease_to_first_event_seconds": 1.0},
        "meets_targets": rate >= TARGET and rate / ingest_only >= 0.5,
        "stage_profile": learner["stages"],
        "settings": {
            "window_seconds": 1.0,
            "window_events": 10_000,
            "snapshot_every_windows": 10,
            "model": settings.model.kind,
            "device": settings.train.device,
        },
    }
    record(f"e2e_{torch.device(args.device).type}" if args.device else "e2e", result)
    print(result)


if __name__ == "__main__":
    main()
