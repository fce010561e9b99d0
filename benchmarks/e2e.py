"""The learner's end-to-end events/s against raw consume and ingest alone, same topic, same run.

    .venv/bin/python -m benchmarks.e2e --events 400000
    .venv/bin/python -m benchmarks.e2e --device cuda          # recorded as e2e_cuda (benchmarks/gpu.sh)

Raw: a bare consumer configured exactly as the learner's source (`consumer_config`: read_committed,
the deep prefetch queue) reads every message of the topic (benchmarks/ingest.py). Ingest: the
learner's source, decoder and windower without training (benchmarks/ingest.py). Learner: the full
job with its default model and settings (decode, validate, window, score, train, snapshot, commit)
to the last event trained (see benchmarks/timing.py: the last window closes on the watermark, not
on idleness), with the stage profile of benchmarks/stages.py; start-up (lease, restore) is reported
separately. One timing rule for all three: the clock starts when the first batch arrives, and that
batch is not counted. Raw, ingest and the learner run ``--rounds`` times, alternated, each round on a
topic of its own (the machine's speed drifts by tens of percent over minutes): the figures are the
medians (the learner's median round gives the start-up and the stage profile), and every round is
recorded. ``meets_targets`` covers every target in ``targets``.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import torch

from benchmarks.ingest import ingest, raw_consume
from benchmarks.kafka_env import bootstrap, delete_topics, new_topic, outputs
from benchmarks.results import record
from benchmarks.rounds import median, median_round
from benchmarks.stages import StageProfile
from benchmarks.timing import learner_rate
from stream_learner.config import Settings
from stream_learner.tools.produce import produce_synthetic

PARTITIONS = 3
#: Events/s end to end on the two-core development machine (issue 10).
TARGET = 150_000


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
    for _ in range(args.rounds):  # alternated, so that a machine that slows down slows all three
        topic = new_topic(address, "e2e", PARTITIONS)  # each round its own topic, model and group
        settings = learner_settings(address, topic, args.device)
        try:
            produce_synthetic(settings.kafka, topic, args.events, rate=10_000, backfill=True)
            raw = raw_consume(settings, args.events, PARTITIONS)
            ingest_only = ingest(settings, args.events)["events_per_s"]
            with StageProfile().active() as profile:
                learner = learner_rate(settings, args.events, PARTITIONS, profile)
            rounds.append({"raw": raw, "ingest": ingest_only, **learner})
        finally:
            delete_topics(address, [topic, *outputs(settings)])
    learner = median_round(rounds, key=lambda r: r["events_per_second"])  # its start-up and profile
    rate = median([r["events_per_second"] for r in rounds])
    raw = median([r["raw"] for r in rounds])
    ingest_only = median([r["ingest"] for r in rounds])
    lease_to_first = median([r["lease_to_first_event_seconds"] for r in rounds])
    targets = {"events_per_second": TARGET, "vs_ingest": 0.5, "lease_to_first_event_seconds": 1.0}
    result = {
        "events": args.events,
        "partitions": PARTITIONS,
        "rounds": [
            {
                "raw_consume_events_per_second": round(r["raw"]),
                "ingest_events_per_second": round(r["ingest"]),
                "learner_events_per_second": round(r["events_per_second"]),
                "learner_vs_ingest": round(r["events_per_second"] / r["ingest"], 4),
                "lease_to_first_event_seconds": round(r["lease_to_first_event_seconds"], 3),
            }
            for r in rounds
        ],
        "raw_consume_events_per_second": round(raw),
        "ingest_events_per_second": round(ingest_only),
        "learner_events_per_second": round(rate),
        "learner_startup_seconds": round(learner["startup_seconds"], 2),
        "lease_to_first_event_seconds": round(lease_to_first, 3),
        "learner_vs_raw": round(rate / raw, 4),
        "learner_vs_ingest": round(rate / ingest_only, 4),
        "targets": targets,
        "meets_targets": rate >= targets["events_per_second"]
        and rate / ingest_only >= targets["vs_ingest"]
        and lease_to_first <= targets["lease_to_first_event_seconds"],
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
