"""End-to-end freshness: from an event's production to the first subscriber model that includes it.

    .venv/bin/python -m benchmarks.freshness --seconds 60

1. Maximum rate: the learner (in this process) trains a backfilled topic with the settings below; its
   rate is timed from its first batch (not counted) to the last event trained, see benchmarks/timing.py.
2. Live, at 50% and 90% of that rate (``--loads``): events are produced in 10 ms chunks, each
   stamped with the time it is due and sent then (encoded beforehand, so that the producer's Avro
   encoding does not compete with the learner for the CPU); the learner runs as its own
   ``stream-learner run`` process; a `ModelSubscriber` in this process follows the
   snapshot topic. An event is in the first model served whose window range ends after its event time
   (windows close in time order, and nothing is late). Its freshness is the time that model began to be
   served minus the time the event was produced. The first two windows (start-up) are not counted, and
   production goes on for a window and a few seconds after the measured span, so every measured window
   closes on the watermark, not on idleness.

Target: every measured event served (``events_not_served`` 0), with p99 <= window size + 2 s, at
both loads; ``meets_target`` covers both. For comparison, the highest load runs once more with
``window.hold_input_while_training = "off"`` (the input read on while windows train). In these runs
the subscriber serves the snapshots' features (``follow_input=False``), as before real-time features.

3. Feature freshness (issue 21): once more at 50% of the maximum, the subscriber also follows the
   input and applies every event to the real-time features (`stream_learner.serving.features`, in
   this process, on the same two cores as the learner and the producer, which runs in a process of
   its own for this run: a serving process does not produce the input); its histogram
   ``stream_learner_subscriber_feature_lag_seconds`` (per applied batch, from the Kafka timestamp of
   ten of its events, from their Kafka timestamps to the batch being applied) gives the p50 and p99,
   interpolated within buckets. Target: p99 <= FEATURE_TARGET_SECONDS, and every event read
   (``input_read_to_end``: the follower's position is the topic's end when production stopped).

    .venv/bin/python -m benchmarks.freshness --workers 2

measures instead a distributed job of 2 ranks (torchrun): its maximum rate with these settings from
a backfilled topic (timed from its log), then live at the same loads, each with the ranks holding
their input while their windows train and then reading on (section ``freshness_distributed``).
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from benchmarks.distributed import job_rate
from benchmarks.kafka_env import bootstrap, delete_topics, end_offsets, new_topic, outputs
from benchmarks.results import record
from benchmarks.timing import learner_rate, produce_trailer
from stream_learner.config import Settings
from stream_learner.ingest.codec import encode_event
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots.format import SnapshotMeta
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticBatch, SyntheticStream

PARTITIONS = 3
WINDOW_SECONDS = 5.0
LATENESS_SECONDS = 0.2
CHUNK_SECONDS = 0.01
FEATURE_TARGET_SECONDS = 2.0
FEATURE_LOAD = 0.5


def sections(address: str, topic: str, name: str) -> dict[str, dict[str, object]]:
    return {
        "kafka": {"bootstrap_servers": address},
        "input": {"topic": topic, "group_id": name},
        "window": {"size_seconds": WINDOW_SECONDS, "allowed_lateness_seconds": LATENESS_SECONDS},
        "dead_letter": {"topic": f"{name}.dlq"},
        "snapshot": {"topic": f"{name}.snapshots", "every_windows": 1, "full_every": 10},
        "model": {"name": name},
        "metrics": {"port": 0},
    }


def max_rate(address: str, events: int) -> float:
    """Events/s the learner trains with these settings, from a backfilled topic (`timing.learner_rate`)."""
    topic = new_topic(address, "fresh-max", PARTITIONS)
    name = f"bench-fresh-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(sections(address, topic, name))
    try:
        produce_synthetic(settings.kafka, topic, events, rate=events / (8 * WINDOW_SECONDS), backfill=True)
        return learner_rate(settings, events, PARTITIONS)["events_per_second"]
    finally:
        delete_topics(address, [topic, *outputs(settings)])


def toml(parts: dict[str, dict[str, object]]) -> str:
    def value(v: object) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    return "\n".join(
        f"[{section}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in values.items())
        for section, values in parts.items()
    )


def live(
    address: str,
    rate: float,
    seconds: float,
    window: dict[str, object] | None = None,
    workers: int = 1,
    follow_input: bool = False,
) -> dict[str, object]:
    """Freshness live at ``rate``; ``window``: settings of the [window] section beside the defaults;
    ``workers`` > 1: the learner runs as a distributed job of that many ranks (``--workers``);
    ``follow_input``: the subscriber also keeps the real-time features current (their freshness is
    reported too)."""
    topic = new_topic(address, "fresh-live", PARTITIONS)
    name = f"bench-fresh-{uuid.uuid4().hex[:8]}"
    config_sections = sections(address, topic, name)
    config_sections["window"].update(window or {})
    settings = Settings.model_validate(config_sections)
    served: list[tuple[float, int, str]] = []  # (serving since, window end ms, kind)
    chunks: list[tuple[float, int]] = []  # (produced at, events)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "learner.toml"
        config.write_text(toml(config_sections))
        learner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream_learner",
                "--log-level",
                "WARNING",
                "run",
                "--config",
                str(config),
                *(["--workers", str(workers)] if workers > 1 else []),
            ]
        )

        def on_update(meta: SnapshotMeta) -> None:
            served.append((time.time(), meta.window_end_ms, meta.kind))

        registry = CollectorRegistry()
        read_to_end = False
        subscriber = ModelSubscriber(
            settings.kafka,
            settings.snapshot.topic,
            name,
            on_update=on_update,
            registry=registry,
            follow_input=follow_input,
        )
        subscriber.start()
        try:
            time.sleep(8 if workers == 1 else 20)  # the learner starts (the ranks meet), takes its lease
            total = seconds + 3 * WINDOW_SECONDS + 3
            if follow_input:  # the serving process serves; the producer is another service's
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    chunks = pool.submit(_produce, settings, topic, rate, total).result()
            else:
                chunks = _produce(settings, topic, rate, total)
            time.sleep(3)
            if follow_input and subscriber.input is not None:
                read_to_end = subscriber.input.wait_for(end_offsets(address, topic, PARTITIONS), 30)
        finally:
            learner.send_signal(signal.SIGTERM)
            learner.wait(120)
            subscriber.close()
            delete_topics(address, [topic, *outputs(settings)])
    start = chunks[0][0] + 2 * WINDOW_SECONDS  # skip the start-up windows
    measured = [(t, n) for t, n in chunks if start <= t < start + seconds]
    ends = [end for _, end, _ in served]
    latencies, counts, missing = [], [], 0
    for t, n in measured:
        i = bisect.bisect_right(ends, int(t * 1000))
        if i == len(served):
            missing += n
            continue
        latencies.append(served[i][0] - t)
        counts.append(n)
    per_event = np.repeat(np.array(latencies), counts)
    p50, p99 = np.percentile(per_event, [50, 99])
    features = _feature_lag(registry, name, read_to_end) if follow_input else {}
    return features | {
        "events_measured": int(per_event.size),
        "events_not_served": missing,
        "p50_seconds": round(float(p50), 3),
        "p99_seconds": round(float(p99), 3),
        "max_seconds": round(float(per_event.max()), 3),
        "models_served": len(served),
        "full_snapshots_served": sum(kind == "FULL" for _, _, kind in served),
    }


def _feature_lag(registry: CollectorRegistry, model: str, read_to_end: bool) -> dict[str, object]:
    """The subscriber's feature lag histogram: p50 and p99 (interpolated within buckets), samples,
    how many events it applied (those after its first snapshot's offsets), and whether it read the
    input to its end."""
    label = {"model": model}
    buckets: list[tuple[float, float]] = []  # (upper bound, cumulative count)
    for metric in registry.collect():
        if metric.name == "stream_learner_subscriber_feature_lag_seconds":
            for sample in metric.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("model") == model:
                    buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    bounds = np.array([b for b, _ in buckets])
    cumulative = np.array([c for _, c in buckets])
    total = cumulative[-1] if len(cumulative) else 0.0

    def quantile(q: float) -> float:
        i = int(np.searchsorted(cumulative, q * total))
        lo, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], cumulative[i - 1])
        hi = bounds[i] if np.isfinite(bounds[i]) else lo
        return round(float(lo + (hi - lo) * (q * total - below) / max(cumulative[i] - below, 1.0)), 3)

    applied = registry.get_sample_value("stream_learner_subscriber_feature_events_applied_total", label) or 0
    return {
        "feature_lag_p50_seconds": quantile(0.5) if total else None,
        "feature_lag_p99_seconds": quantile(0.99) if total else None,
        "feature_lag_samples": int(total),
        "features_applied": int(applied),
        "input_read_to_end": read_to_end,
    }


def _produce(settings: Settings, topic: str, rate: float, seconds: float) -> list[tuple[float, int]]:
    """Events at ``rate`` for ``seconds``, in 10 ms chunks, each stamped with the time it is due and
    sent then; returns (due time, count) per chunk. The events are encoded beforehand (the start is
    set far enough ahead for that), so that at high rates the producer's Avro encoding does not take
    the learner's CPU on a small machine; a chunk sent late counts its delay in the freshness."""
    stream = SyntheticStream()
    chunks = int(seconds / CHUNK_SECONDS)
    sizes = np.diff(np.floor(np.arange(chunks + 1) * rate * CHUNK_SECONDS).astype(np.int64))
    probe = time.perf_counter()
    _encode(stream.batch(20_000, 0, 0.0))
    ahead = (time.perf_counter() - probe) / 20_000 * float(sizes.sum()) * 1.5 + 2.0
    begun = time.time() + ahead
    due = [begun + c * CHUNK_SECONDS for c in range(chunks)]
    prepared = [_encode(stream.batch(int(n), int(t * 1000), 0.0)) for t, n in zip(due, sizes, strict=True)]
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 5, "enable.idempotence": True})
    for at, messages in zip(due, prepared, strict=True):
        time.sleep(max(0.0, at - time.time()))
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    producer.flush(30)
    return [(at, int(n)) for at, n in zip(due, sizes, strict=True)]


def _encode(batch: SyntheticBatch) -> list[tuple[bytes, bytes]]:
    return [
        (user.encode(), encode_event(record))
        for record, user in zip(batch.records(), batch.user_id, strict=True)
    ]


def measure(address: str, maximum: float, loads: list[float], seconds: float) -> dict[str, object]:
    """Freshness live at each fraction of ``maximum`` in ``loads``, and whether each meets the target."""
    target = WINDOW_SECONDS + 2
    out: dict[str, object] = {}
    for load in loads:
        result = live(address, maximum * load, seconds)
        within = result["p99_seconds"] <= target  # type: ignore[operator]
        out[f"{round(load * 100)}%"] = {
            "events_per_second": round(maximum * load),
            "meets_target": within and result["events_not_served"] == 0,  # every event is served
            **result,
        }
        print(f"at {load:.0%} of the maximum: {out[f'{round(load * 100)}%']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured span of each live run")
    parser.add_argument("--max-events", type=int, default=200_000, help="events for the maximum rate")
    parser.add_argument(
        "--loads", type=float, nargs="+", default=[0.5, 0.9], help="live rates as fractions of the maximum"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="N > 1: instead, a distributed job of N ranks at the loads, with and without the input "
        "held while windows train (records freshness_distributed)",
    )
    parser.add_argument(
        "--features-only", action="store_true", help="only the feature freshness run; nothing recorded"
    )
    args = parser.parse_args()
    address = bootstrap()
    if args.workers > 1:
        distributed(address, args.workers, args.loads, args.seconds, args.max_events)
        return
    maximum = max_rate(address, args.max_events)
    print(f"maximum rate {maximum:.0f} events/s", flush=True)
    if args.features_only:  # the subscriber's feature freshness alone (not recorded)
        print(live(address, maximum * FEATURE_LOAD, args.seconds, follow_input=True), flush=True)
        return
    loads = measure(address, maximum, args.loads, args.seconds)
    # the same at the highest load with the input read on while windows train (the setting's "off")
    top = max(args.loads)
    reading = live(address, maximum * top, args.seconds, {"hold_input_while_training": "off"})
    print(f"at {top:.0%}, input read while training: {reading}", flush=True)
    features = live(address, maximum * FEATURE_LOAD, args.seconds, follow_input=True)
    p99 = features["feature_lag_p99_seconds"]
    features["meets_target"] = (
        p99 is not None
        and p99 <= FEATURE_TARGET_SECONDS  # type: ignore[operator]
        and bool(features["input_read_to_end"])
    )
    print(f"at {FEATURE_LOAD:.0%}, the subscriber following the input: {features}", flush=True)
    result = {
        "max_events_per_second": round(maximum),
        "window_seconds": WINDOW_SECONDS,
        "allowed_lateness_seconds": LATENESS_SECONDS,
        "snapshot": "every window, full every 10th; default settings otherwise",
        "target_p99_seconds": WINDOW_SECONDS + 2,
        "loads": loads,
        "input_read_while_training": {"load": top, "events_per_second": round(maximum * top), **reading},
        "meets_target": all(r["meets_target"] for r in loads.values()),  # type: ignore[index]
        "features": {
            "load": FEATURE_LOAD,
            "events_per_second": round(maximum * FEATURE_LOAD),
            "target_p99_seconds": FEATURE_TARGET_SECONDS,
            **features,
        },
    }
    record("freshness", result)
    print(result)


def max_rate_distributed(address: str, events: int, workers: int) -> float:
    """Events/s a job of ``workers`` ranks trains with these settings from a backfilled topic, timed
    from its log (`benchmarks.distributed.job_rate`)."""
    topic = new_topic(address, "fresh-max", PARTITIONS)
    ours = sections(address, topic, f"bench-fresh-{uuid.uuid4().hex[:8]}")
    settings = Settings.model_validate(ours)
    # this benchmark's window and snapshot schedule; job_rate names the topics and the group
    overrides = {
        "window": ours["window"],
        "snapshot": {k: ours["snapshot"][k] for k in ("every_windows", "full_every")},
    }
    try:
        produce_synthetic(settings.kafka, topic, events, rate=events / (8 * WINDOW_SECONDS), backfill=True)
        produce_trailer(settings, PARTITIONS)
        with tempfile.TemporaryDirectory() as tmp:
            rate = job_rate(address, topic, events, f"{workers}-ranks", Path(tmp), overrides)
        return float(rate["events_per_second"])
    finally:
        delete_topics(address, [topic])


def distributed(address: str, workers: int, loads: list[float], seconds: float, events: int) -> None:
    """A distributed job live at each of ``loads`` of its maximum rate: with its ranks holding their
    input while their windows train (the default on the CPU), then reading on
    (``hold_input_while_training = "off"``)."""
    maximum = max_rate_distributed(address, events, workers)
    print(f"{workers} ranks: maximum rate {maximum:.0f} events/s", flush=True)
    runs: dict[str, dict[str, object]] = {}
    for load in loads:
        at = runs.setdefault(f"{round(load * 100)}%", {"events_per_second": round(maximum * load)})
        for hold in ("auto", "off"):
            at[f"hold_input_while_training={hold}"] = result = live(
                address, maximum * load, seconds, {"hold_input_while_training": hold}, workers=workers
            )
            print(f"{workers} ranks at {load:.0%}, hold {hold}: {result}", flush=True)
    record(
        "freshness_distributed",
        {
            "workers": workers,
            "max_events_per_second": round(maximum),
            "window_seconds": WINDOW_SECONDS,
            "allowed_lateness_seconds": LATENESS_SECONDS,
            "snapshot": "every window, full every 10th; default settings otherwise",
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
