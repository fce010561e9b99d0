"""Broker and topics for benchmarks: STREAM_LEARNER_BENCH_BOOTSTRAP, else the local broker."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]


def bootstrap() -> str:
    explicit = os.environ.get("STREAM_LEARNER_BENCH_BOOTSTRAP")
    if explicit:
        return explicit
    out = subprocess.run(
        [str(REPO / "deploy/kafka/kafka.sh"), "start"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def new_topic(address: str, prefix: str, partitions: int) -> str:
    name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": address})
    admin.create_topics([NewTopic(name, partitions)])[name].result(30)
    return name


def delete_topics(address: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": address})
    existing = set(admin.list_topics(timeout=30).topics)
    doomed = [n for n in names if n in existing]
    for future in admin.delete_topics(doomed).values() if doomed else []:
        future.result(30)
