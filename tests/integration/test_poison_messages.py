"""Poison messages never stop the job: valid events with a 9.5 MB item id and a 31 MB one (the input
topic takes 32 MB messages, the dead-letter topic the broker's 16 MiB), and a 9 MB value in a context
field the model does not use, among ordinary events. Each is rejected with its reason and
dead-lettered, whole when the dead-letter topic takes it, else cut to fit with its original size,
sha256, partition, offset and reason in headers; everything else is trained on and committed."""

from __future__ import annotations

import hashlib
import time

from confluent_kafka import Producer

from stream_learner.ingest.codec import encode_event
from tests.ingest_support import event
from tests.support import (
    AppThread,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_all,
    read_snapshots,
    wait_for,
)

INPUT_LIMIT = 32 << 20
BROKER_LIMIT = 16 << 20  # message.max.bytes of the test brokers: the dead-letter topic's default


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    errors: list[object] = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": INPUT_LIMIT, "linger.ms": 0})
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, _m: err and errors.append(err))
        producer.flush(60)  # one at a time, in this order
    assert not errors, errors


def test_oversized_messages_are_dead_lettered_whole_or_cut_and_the_job_goes_on(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=1, config={"max.message.bytes": INPUT_LIMIT})
    settings = learner_settings(kafka_bootstrap, topic, model={"kind": "logistic"})
    t0 = (int(time.time()) - 60) * 1000
    valid = [encode_event(event(user_id=f"u{k}", timestamp=t0 + 100 * k)) for k in range(60)]
    poison = {
        10: encode_event(event(item_id="i" * (9_500_000), timestamp=t0 + 1_000)),  # fits the DLQ
        20: encode_event(event(item_id="j" * (31_000_000), timestamp=t0 + 2_000)),  # does not
        30: encode_event(event(context={"campaign": "c" * 9_000_000}, timestamp=t0 + 3_000)),
    }
    values = list(valid)
    for at in sorted(poison, reverse=True):
        values.insert(at, poison[at])
    _produce(kafka_bootstrap, topic, values)
    ends = end_offsets(kafka_bootstrap, topic, 1)

    with AppThread(settings) as run:
        group = settings.input.group_id
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == ends, 120, "all committed")
        registry = run.app.registry
        run.stop()

    dead = {
        int(dict(m.headers())["stream-learner.source.offset"]): m
        for m in read_all(kafka_bootstrap, settings.dead_letter.topic)
    }
    offsets = {values.index(v): v for v in poison.values()}
    assert set(dead) == set(offsets)
    whole_id, cut_id, context = sorted(offsets)
    for offset in (whole_id, context):  # they fit: dead-lettered as they came
        assert dead[offset].value() == offsets[offset]
        assert "stream-learner.truncated" not in dict(dead[offset].headers())
    headers = dict(dead[cut_id].headers())
    original = offsets[cut_id]
    assert len(dead[cut_id]) <= BROKER_LIMIT and dead[cut_id].value() == original[: len(dead[cut_id].value())]
    assert len(dead[cut_id].value()) > BROKER_LIMIT // 2
    assert headers["stream-learner.truncated"] == b"value"
    assert int(headers["stream-learner.original.size"]) == len(original)
    assert headers["stream-learner.original.sha256"] == hashlib.sha256(original).hexdigest().encode()
    assert headers["stream-learner.source.partition"] == b"0"
    assert headers["stream-learner.reason"] == b"id_too_long"
    assert dict(dead[context].headers())["stream-learner.reason"] == b"field_too_long"

    invalid = "stream_learner_events_invalid_total"
    assert registry.get_sample_value(invalid, {"reason": "id_too_long"}) == 2
    assert registry.get_sample_value(invalid, {"reason": "field_too_long"}) == 1
    assert registry.get_sample_value("stream_learner_dead_letters_truncated_total") == 1
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == len(valid)
