"""Ingest alone (consume, decode, validate, window; no training) against raw consume, same topic, one run.

    .venv/bin/python -m benchmarks.ingest --events 1000000 [--profile]

Raw: a bare confluent-kafka consumer with exactly the learner's consumer settings
(`stream_learner.kafka.source.consumer_config`) reads every message (the batch is counted, nothing
is decoded). Ingest: the learner's `Source`, `Decoder` and windower, exactly as the pipeline runs
them, minus training. The two alternate (raw, ingest, raw, ingest, ...) so that noise from a shared
machine hits both, and the figures are the medians of the rounds (benchmarks/rounds.py). Every rate
(here and in benchmarks/e2e.py) is timed by one rule: the clock starts when the first batch
arrives, and that batch is not counted. Stage times (consume, decode + validate, window) come from
the median ingest round; ``--profile`` adds the functions where the time goes (cProfile, by own
time) from one more ingest run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
import uuid
from operator import methodcaller
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from benchmarks.kafka_env import bootstrap, delete_topics, new_topic
from benchmarks.results import record
from benchmarks.rounds import median, median_round
from stream_learner.config import Settings
from stream_learner.ingest.codec import encode_event, make_decoder
from stream_learner.ingest.windowing import make_windower
from stream_learner.kafka.source import Source, consumer_config
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

PARTITIONS = 3
TARGET = 150_000  # events/s on the two-core development machine (issue 3)


def raw_consume(settings: Settings, events: int, partitions: int = PARTITIONS) -> float:
    """Events/s of a bare consumer with the librdkafka settings `Source` uses."""
    consumer = Consumer({**consumer_config(settings), "group.id": f"raw-{uuid.uuid4().hex}"})
    consumer.assign([TopicPartition(settings.input.topic, p, 0) for p in range(partitions)])
    first, seen, started = 0, 0, 0.0
    while seen < events:
        batch = consumer.consume(settings.input.max_batch, 1.0)
        seen += len(batch) - len(list(filter(methodcaller("error"), batch)))
        if seen and not started:  # timed from the end of the first batch, which is not counted
            first, started = seen, time.perf_counter()
    elapsed = time.perf_counter() - started
    consumer.close()
    return (events - first) / elapsed


def ingest(settings: Settings, events: int) -> dict[str, Any]:
    """Events/s of consume + decode + validate + window, and the time of each stage."""
    source = Source(settings)
    source.start({})
    decoder = make_decoder(settings, time.time)
    windower = make_windower(settings)
    windower.assign(source.partitions, time.time())
    stages = {"consume": 0.0, "decode": 0.0, "window": 0.0}
    seen = windowed = invalid = first = 0
    started = 0.0
    while seen < events:
        t0 = time.perf_counter()
        messages, at_end = source.consume(settings.input.poll_timeout_seconds)
        t1 = time.perf_counter()
        for p in at_end:
            windower.mark_at_end(p)
        decoded = decoder.decode(messages)
        t2 = time.perf_counter()
        windowed += sum(len(w) for w in windower.add(decoded.batch, time.time()).windows)
        t3 = time.perf_counter()
        seen += len(messages)
        invalid += len(decoded.rejected)
        if started:
            stages["consume"] += t1 - t0
            stages["decode"] += t2 - t1
            stages["window"] += t3 - t2
        elif seen:  # timed from the end of the first batch, which is not counted (as for raw)
            first, started = seen, t3
    elapsed = time.perf_counter() - started
    source.close()
    windowed += sum(len(w) for w in windower.flush())
    assert invalid == 0 and windowed == events, (invalid, windowed)  # every event in one window
    return {"events_per_s": (events - first) / elapsed, "seconds": elapsed, "stages_s": stages}


def profile(settings: Settings, events: int, top: int = 12) -> list[dict[str, Any]]:
    profiler = cProfile.Profile()
    profiler.runcall(ingest, settings, events)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{file.rsplit('/', 1)[-1]}:{line}({name})", "calls": calls, "own_s": own,
                     "own_share": own / total, "cumulative_s": cumulative})  # fmt: skip
    return sorted(rows, key=lambda r: r["own_s"], reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="raw and ingest runs, alternated (medians)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    address = bootstrap()
    topic = new_topic(address, "ingest", PARTITIONS)
    synthetic = SyntheticConfig(seed=1)
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": address},
            "input": {"topic": topic, "group_id": f"bench-{uuid.uuid4().hex[:8]}"},
            "model": {"context_fields": [name for name, _ in synthetic.context]},
        }
    )
    try:
        # Ten thousand events per second of event time: 60-second windows of 600,000 events.
        produce_synthetic(settings.kafka, topic, args.events, 10_000.0, backfill=True, config=synthetic)
        sample = [encode_event(r) for r in SyntheticStream(synthetic).batch(1000, 0, 1.0).records()]
        raw, ingested = [], []
        for _ in range(args.rounds):
            raw.append(raw_consume(settings, args.events))
            ingested.append(ingest(settings, args.events))
        middle = median_round(ingested, key=lambda r: r["events_per_s"])
        rate, raw_rate = median([r["events_per_s"] for r in ingested]), median(raw)
        result: dict[str, Any] = {
            "events": args.events,
            "partitions": PARTITIONS,
            "event_bytes": sum(map(len, sample)) / len(sample),
            "context_fields": settings.model.context_fields,
            "raw_consume_events_per_s": raw_rate,
            "ingest_events_per_s": rate,
            "ingest_vs_raw": rate / raw_rate,
            "target_events_per_s": TARGET,
            "meets_target": rate >= TARGET,
            "stages_s": middle["stages_s"],
            "rounds": {"raw_events_per_s": raw, "ingest_events_per_s": [r["events_per_s"] for r in ingested]},
        }
        if args.profile:
            result["profile_top"] = profile(settings, args.events)
        record("ingest", result)
        print({k: v for k, v in result.items() if k != "profile_top"})
        for row in result.get("profile_top", []):
            print(f"  {row['own_share']:6.1%}  {row['own_s']:7.3f}s  {row['calls']:>8}  {row['function']}")
    finally:
        delete_topics(address, [topic])


if __name__ == "__main__":
    main()
