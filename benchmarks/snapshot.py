"""Full versus delta snapshots: bytes, the training pause to copy the state, and the time to publish.

    .venv/bin/python -m benchmarks.snapshot --rows 20 22

For each table size (2^rows rows in both the user and the item table of the default DeepFM, dim 16,
Adagrad), a learner trains one window, then the worker copies its state (full) and the publisher
commits it through the real broker (transactional, chunked at snapshot.max_message_bytes); then it
trains another window and does the same as a delta. ``copy_seconds`` is the pause of the training
thread, ``publish_seconds`` the time from handing the copy to the publisher to the commit.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import numpy as np
from confluent_kafka import Consumer

from benchmarks.kafka_env import bootstrap, delete_topics, outputs
from benchmarks.results import record
from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch, hash_id
from stream_learner.ingest.windowing import Window
from stream_learner.kafka.admin import ensure_topics
from stream_learner.kafka.sink import Sink
from stream_learner.learning.learner import Learner
from stream_learner.snapshots.publisher import Publisher
from stream_learner.snapshots.state import StateCopier, StateCopy

WINDOW_EVENTS = 20_000
WINDOW_MS = 60_000


def _window(index: int, rng: np.random.Generator) -> Window:
    """A window of synthetic events over a million users and 100,000 items."""
    users = rng.integers(0, 1_000_000, WINDOW_EVENTS)
    items = rng.zipf(1.1, WINDOW_EVENTS) % 100_000
    start = int(time.time() * 1000) // WINDOW_MS * WINDOW_MS - (10 - index) * WINDOW_MS
    n = WINDOW_EVENTS
    events = EventBatch(
        user=np.array([hash_id(f"u{u}") for u in users], dtype=np.int64),
        item=np.array([hash_id(f"i{i}") for i in items], dtype=np.int64),
        context=np.empty((n, 0), np.int64),
        label=(rng.random(n) < 0.2).astype(np.float32),
        timestamp_ms=np.sort(rng.integers(start, start + WINDOW_MS, n)),
        partition=np.zeros(n, np.int32),
        offset=np.arange(index * n, (index + 1) * n, dtype=np.int64),
        item_ids=np.array([f"i{i}" for i in items], dtype=object),
    )
    return Window(start, start + WINDOW_MS, events, {0: (index * n, (index + 1) * n - 1)}, "watermark")


def measure(address: str, log2_rows: int) -> dict[str, object]:
    name = f"bench-snap-{uuid.uuid4().hex[:8]}"
    rows = 1 << log2_rows
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": address},
            "input": {"topic": f"{name}.in", "group_id": name},
            "dead_letter": {"topic": f"{name}.dlq"},
            "snapshot": {"topic": f"{name}.snapshots", "full_every": 10},
            "model": {"name": name, "user_buckets": rows, "item_buckets": rows},
            "train": {"device": "cpu"},
        }
    )
    ensure_topics(settings, input_partitions=1)
    group = Consumer({"bootstrap.servers": address, "group.id": name})
    sink = Sink(settings, commit_offsets=lambda offsets: None)
    sink.start()
    committed = threading.Event()
    learner = Learner(settings)
    copier = StateCopier(learner, full_every=10)
    sizes: list[int] = []
    publisher = Publisher(
        settings=settings,
        sink=sink,
        spec_json=learner.spec.to_json(),
        clock=time.time,
        on_committed=lambda meta, size: sizes.append(size),
        checkpoint=lambda meta, messages: committed.set(),  # called right after the commit
    )
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"rows_per_table": rows}
    try:
        for index, kind in enumerate(("full", "delta")):
            result = learner.process(_window(index, rng))
            publisher.trained(result)
            started = time.perf_counter()
            copy: StateCopy = copier.copy()  # what the training thread does after a window
            copied = time.perf_counter()
            assert copy.kind == kind.upper()
            committed.clear()
            publisher.publish(copy, {0: (index + 1) * WINDOW_EVENTS}, {}, group.consumer_group_metadata())
            while not committed.wait(0.1):
                sink.poll()  # raises what went wrong on the sink's thread
            done = time.perf_counter()
            size = sizes[-1]
            touched = copy.tensors.get("delta.rows/user")
            out[kind] = {
                "bytes": size,
                "copy_seconds": round(copied - started, 3),
                "publish_seconds": round(done - copied, 3),
                **({"touched_user_rows": len(touched)} if touched is not None else {}),
            }
            print(log2_rows, kind, out[kind], flush=True)
    finally:
        sink.close(60)
        group.close()
        delete_topics(address, [settings.input.topic, *outputs(settings)])
    full, part = out["full"], out["delta"]
    out["delta_vs_full_bytes"] = round(part["bytes"] / full["bytes"], 5)  # type: ignore[index]
    out["delta_vs_full_publish"] = round(part["publish_seconds"] / full["publish_seconds"], 4)  # type: ignore[index]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[20, 22], help="log2 of the rows per table")
    args = parser.parse_args()
    address = bootstrap()
    results = {f"2^{r}": measure(address, r) for r in args.rows}
    record(
        "snapshot",
        {
            "window_events": WINDOW_EVENTS,
            "model": "dnn, dim 16, adagrad; user and item tables of the size given",
            "max_message_bytes": Settings().snapshot.max_message_bytes,
            "sizes": results,
        },
    )
    print(results)


if __name__ == "__main__":
    main()
