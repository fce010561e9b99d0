"""The learner with ``input.format = "confluent"`` through a real Confluent-compatible Schema Registry
(Apicurio Registry, `deploy/schema-registry/registry.sh`) and the real broker: events written with two
registered versions of the schema are all trained; an unregistered schema id is dead-lettered."""

from __future__ import annotations

import copy
import json
import time
import urllib.request
import uuid

from stream_learner.avro_schemas import load_schema
from stream_learner.ingest.codec import confluent_frame, encode_event
from tests.ingest_support import event, produce
from tests.support import AppThread, learner_settings, read_all, read_snapshots

PARTITIONS = 2


def _register(url: str, subject: str, schema: dict[str, object]) -> int:
    """Register ``schema`` under ``subject`` (Confluent's POST /subjects/{subject}/versions); its id."""
    request = urllib.request.Request(
        f"{url}/subjects/{subject}/versions",
        data=json.dumps({"schema": json.dumps(schema)}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.loads(response.read())["id"])


def test_the_learner_reads_the_confluent_format_through_a_real_registry(
    kafka_bootstrap, schema_registry_url, new_topic
):
    topic = new_topic("events", partitions=PARTITIONS)
    subject = f"{topic}-value-{uuid.uuid4().hex[:8]}"
    v1 = load_schema("user_event")
    v2 = copy.deepcopy(v1)  # a later writer: one more field, with a default (a compatible evolution)
    v2["fields"].append({"name": "source", "type": "string", "default": "web"})
    id1 = _register(schema_registry_url, subject, v1)
    id2 = _register(schema_registry_url, subject, v2)
    assert id1 != id2

    now = int(time.time() * 1000) - 30_000
    good = []
    for k in range(600):
        record = event(user_id=f"u{k % 50}", item_id=f"i{k % 40}", timestamp=now + 20 * k)
        if k % 2:
            good.append(confluent_frame(id1, encode_event(record, v1)))
        else:
            good.append(confluent_frame(id2, encode_event({**record, "source": "app"}, v2)))
    unknown = confluent_frame(2_000_000_000, encode_event(event(timestamp=now)))
    produce(kafka_bootstrap, topic, [(k % PARTITIONS, None, v, None) for k, v in enumerate([*good, unknown])])
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        input={"format": "confluent", "schema_registry_url": schema_registry_url},
    )

    with AppThread(settings, exit_when_idle=True) as run:
        summary = run.join(120)

    assert summary.events == len(good) + 1 and summary.invalid == 1
    reason = {"reason": "unknown_schema"}
    assert run.app.registry.get_sample_value("stream_learner_events_invalid_total", reason) == 1
    learner = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1].meta.state_dict()["learner"]
    assert learner["events_trained"] == len(good)
    (letter,) = read_all(kafka_bootstrap, settings.dead_letter.topic)
    assert letter.value() == unknown
