"""Helpers for tests that run the learner against the real broker."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_learner.config import Settings
from stream_learner.runtime.app import App, Summary
from stream_learner.snapshots.format import Assembler, Snapshot, decode_chunk


def learner_settings(bootstrap: str, input_topic: str, **sections: dict[str, Any]) -> Settings:
    """Settings for one test: unique model, group and output topics; small windows; any port."""
    name = f"m-{uuid.uuid4().hex[:10]}"
    base: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": bootstrap},
        "input": {"topic": input_topic, "group_id": f"g-{name}"},
        "window": {"size_seconds": 1.0, "allowed_lateness_seconds": 0.0, "idle_timeout_seconds": 1.0},
        "dead_letter": {"topic": f"{name}.dlq"},
        "snapshot": {"topic": f"{name}.snapshots", "every_windows": 3},
        "model": {"name": name, "user_buckets": 1 << 12, "item_buckets": 1 << 10},
        "metrics": {"port": 0},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return Settings.model_validate(base)


class AppThread:
    """Runs an `App` in a background thread; `stop()` asks it to finish and waits."""

    def __init__(self, settings: Settings, exit_when_idle: bool = False) -> None:
        self.app = App(settings)
        self.summary: Summary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(exit_when_idle,), daemon=True)

    def _run(self, exit_when_idle: bool) -> None:
        try:
            self.summary = self.app.run(exit_when_idle=exit_when_idle)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> AppThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 120.0) -> Summary:
        self.app.request_stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the learner did not stop in time"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def join(self, timeout: float) -> Summary:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the learner did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def read_all(
    bootstrap: str, topic: str, timeout: float = 30.0, isolation: str = "read_committed"
) -> list[Any]:
    """Every message of a single-partition topic (committed only, unless ``isolation`` is
    "read_uncommitted"), from the beginning to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 64 << 20,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[Any] = []
    try:
        while True:
            msg = consumer.poll(timeout)
            assert msg is not None, f"no end of {topic} within {timeout}s"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return out
            out.append(msg)
    finally:
        consumer.close()


def read_snapshots(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Snapshot]:
    """Every complete committed snapshot on ``topic`` (one partition), in order."""
    assembler = Assembler()
    snapshots = (assembler.add(decode_chunk(msg.value())) for msg in read_all(bootstrap, topic, timeout))
    return [s for s in snapshots if s is not None]


def assert_history_tiles(snapshots: list[Snapshot], topic: str, ends: dict[int, int]) -> None:
    """One committed history: versions 1, 2, ... and per-partition offset ranges of ``topic`` that tile
    every partition from 0 to its end, with no gap and no overlap (every event included once)."""
    assert snapshots, "no snapshot committed"
    assert [s.meta.version for s in snapshots] == list(range(1, len(snapshots) + 1)), (
        "a version twice or lost"
    )
    nxt = dict.fromkeys(ends, 0)
    for snap in snapshots:
        for r in snap.meta.offsets:
            assert r.topic == topic and r.first == nxt[r.partition], (
                f"v{snap.meta.version} {r}: gap or overlap"
            )
            nxt[r.partition] = r.last + 1
    assert nxt == ends, "the committed ranges do not cover every event"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Fetch a Prometheus text endpoint over HTTP: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_for_topic(admin: Any, name: str, partitions: int, timeout: float = 30.0) -> None:
    """Wait until topic ``name`` is listed with every partition led (a client created at once may
    not see a topic the admin client just created)."""
    deadline = time.monotonic() + timeout
    last = "not listed yet"
    while True:
        try:
            topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
        except Exception as exc:
            topic, last = None, f"{type(exc).__name__}: {exc}"
        if topic is not None:
            if topic.error is not None:
                last = str(topic.error)
            elif len(topic.partitions) == partitions and all(
                p.leader >= 0 and p.error is None for p in topic.partitions.values()
            ):
                return
            else:
                last = f"{len(topic.partitions)}/{partitions} partitions with a leader"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout:.0f} s: {last}")
        time.sleep(0.2)
