"""The README's producer snippet, run as written from another directory against the real broker:
it fails loudly while the topic is missing, and once ``stream-learner topics create`` made it, its
event reaches the topic as a valid UserEvent."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_learner.avro_schemas import load_schema

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    section = README.read_text().split("## Producing events from another service", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no Python snippet in the README's producer section"
    return match.group(1)


def _run(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_the_readme_producer_fails_without_its_topic_and_delivers_once_it_is_created(
    kafka_bootstrap, tmp_path
):
    topic = f"readme-{uuid.uuid4().hex}"
    code = _snippet()
    assert code.count('"127.0.0.1:39092"') == 1 and code.count('TOPIC = "user-events"') == 1
    script = tmp_path / "producer.py"  # outside the repository: no schemas/ beside it
    script.write_text(
        code.replace('"127.0.0.1:39092"', repr(kafka_bootstrap)).replace(
            'TOPIC = "user-events"', f"TOPIC = {topic!r}"
        )
    )
    config = tmp_path / "learner.toml"  # the other topics topics-create makes, named for this test
    config.write_text(f'[snapshot]\ntopic = "{topic}.snapshots"\n[dead_letter]\ntopic = "{topic}.dlq"\n')

    missing = _run(tmp_path, sys.executable, str(script))
    assert missing.returncode != 0 and f"topic {topic} does not exist" in missing.stderr

    created = _run(
        tmp_path,
        *(sys.executable, "-m", "stream_learner", "topics", "create", "--config", str(config)),
        *("--bootstrap-server", kafka_bootstrap, "--topic", topic, "--partitions", "2"),
    )
    try:
        assert created.returncode == 0, created.stderr
        assert created.stdout.splitlines()[:3] == [
            f"created {topic}",
            f"created {topic}.snapshots",
            f"created {topic}.dlq",
        ]
        again = _run(tmp_path, sys.executable, str(script))
        assert again.returncode == 0, again.stderr
        values = _read_all(kafka_bootstrap, topic, partitions=2)
    finally:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_topics([topic, f"{topic}.snapshots", f"{topic}.dlq"]).values():
            future.result(60)

    schema = fastavro.parse_schema(load_schema("user_event"))
    (event,) = [fastavro.schemaless_reader(io.BytesIO(v), schema, schema) for v in values]
    assert (event["user_id"], event["item_id"], event["event_type"]) == ("user-42", "item-7", "click")


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    group = f"probe-{uuid.uuid4().hex}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values, ended = [], set()
    try:
        while len(ended) < partitions:
            msg = consumer.poll(10)
            assert msg is not None, "no end of partition within 10 s"
            if msg.error() is None:
                values.append(msg.value())
            else:
                ended.add(msg.partition())
    finally:
        consumer.close()
    return values
