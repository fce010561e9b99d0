"""Smoke tests of the real Kafka broker the integration tests run against (see tests/conftest.py).

They check the broker properties the project relies on: multi-partition produce/consume, transactions
with read_committed isolation, and large (snapshot-sized) messages.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

MIB = 1024 * 1024


def _partition(msg: Message) -> int:
    partition = msg.partition()
    assert partition is not None
    return partition


def _value(msg: Message) -> bytes:
    value = msg.value()
    assert value is not None
    return value


def _consumer(bootstrap: str, **overrides: object) -> Consumer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
    config.update(overrides)
    return Consumer(config)


def _consume(
    consumer: Consumer, topic: str, partitions: int, expected: int, timeout: float = 60.0
) -> list[Message]:
    """Read from ``topic`` until ``expected`` messages arrived and every partition reached EOF."""
    consumer.subscribe([topic])
    messages: list[Message] = []
    at_eof: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(messages) >= expected and len(at_eof) == partitions:
            break
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                at_eof.add(_partition(msg))
                continue
            raise KafkaException(err)
        at_eof.discard(_partition(msg))
        messages.append(msg)
    return messages


def _produce_checked(producer: Producer, topic: str, items: list[tuple[bytes, bytes]]) -> list[Message]:
    """Produce (key, value) pairs and return the delivered messages; fail on any delivery error."""
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still in flight after 60 s"
    assert not errors, f"delivery errors: {errors[:5]}"
    return delivered


def test_produce_and_consume_1000_messages(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic("broker-basic", partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "acks": "all"})
    items = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(1000)]
    delivered = _produce_checked(producer, topic, items)
    assert len(delivered) == 1000
    assert {m.partition() for m in delivered} == {0, 1, 2}

    consumer = _consumer(kafka_bootstrap)
    try:
        messages = _consume(consumer, topic, partitions=3, expected=1000)
    finally:
        consumer.close()

    assert len(messages) == 1000
    assert sorted((m.key(), m.value()) for m in messages) == sorted(items)
    # Per partition, messages come back in the order they were produced.
    by_partition: dict[int, list[int]] = defaultdict(list)
    for m in messages:
        by_partition[_partition(m)].append(int(_value(m).split(b"-")[1]))
    for partition, seq in by_partition.items():
        assert seq == sorted(seq), f"partition {partition} out of order"


def test_transactions_read_committed(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic("broker-txn", partitions=1)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"test-txn-{uuid.uuid4().hex}",
            "transaction.timeout.ms": 60000,
        }
    )
    producer.init_transactions(60)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"c", value=f"committed-{i}".encode())
    producer.commit_transaction(60)

    producer.begin_transaction()
    for i in range(7):
        producer.produce(topic, key=b"a", value=f"aborted-{i}".encode())
    producer.flush(60)  # the aborted records really reach the log
    producer.abort_transaction(60)

    producer.begin_transaction()
    for i in range(10, 15):
        producer.produce(topic, key=b"c", value=f"committed-{i}".encode())
    producer.commit_transaction(60)

    committed = [f"committed-{i}".encode() for i in range(15)]

    consumer = _consumer(kafka_bootstrap, **{"isolation.level": "read_committed"})
    try:
        values = [m.value() for m in _consume(consumer, topic, partitions=1, expected=15)]
    finally:
        consumer.close()
    assert values == committed

    # read_uncommitted shows the aborted records too: the abort was real, not a lost produce.
    consumer = _consumer(kafka_bootstrap, **{"isolation.level": "read_uncommitted"})
    try:
        values = [m.value() for m in _consume(consumer, topic, partitions=1, expected=22)]
    finally:
        consumer.close()
    assert len(values) == 22
    assert [v for v in values if v is not None and v.startswith(b"aborted-")] == [
        f"aborted-{i}".encode() for i in range(7)
    ]


def test_large_message(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic("broker-large", partitions=1, config={"max.message.bytes": "10485760"})
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "message.max.bytes": 16 * MIB,
            "compression.type": "none",
        }
    )
    payload = os.urandom(5 * MIB)
    _produce_checked(producer, topic, [(b"snapshot", payload)])

    # Above the topic's max.message.bytes (but below the producer's limit) the broker refuses it.
    errors: list[KafkaError | None] = []
    producer.produce(topic, value=os.urandom(11 * MIB), on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(60) == 0
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors[0]

    consumer = _consumer(
        kafka_bootstrap,
        **{"fetch.max.bytes": 16 * MIB, "max.partition.fetch.bytes": 16 * MIB},
    )
    try:
        messages = _consume(consumer, topic, partitions=1, expected=1)
    finally:
        consumer.close()
    assert len(messages) == 1
    assert messages[0].key() == b"snapshot"
    assert len(_value(messages[0])) == 5 * MIB
    assert hashlib.sha256(_value(messages[0])).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("partitions", [1, 4])
def test_new_topic_fixture(kafka_bootstrap: str, new_topic, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    topic = new_topic("broker-fixture", partitions=partitions, config={"cleanup.policy": "compact"})
    assert topic.startswith("broker-fixture-")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(topic=topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == partitions
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["cleanup.policy"].value == "compact"
