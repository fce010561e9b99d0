"""Topic administration: the cluster and the input topic checked at start, the topics the learner
writes to created with the configs they need, and the message size a topic takes."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from stream_learner.config import KafkaSettings, Settings
from stream_learner.errors import BrokerError, StartupError
from stream_learner.kafka.clients import client_config

log = logging.getLogger(__name__)


def check_cluster(settings: Settings) -> int:
    """Fail fast, before anything is created: a broker must answer within
    ``kafka.startup_timeout_seconds`` and the input topic must exist (`StartupError` naming the
    address or the topic). Returns the input topic's partition count. The probe's own librdkafka
    logging is off: the error says it all."""
    kafka, timeout = settings.kafka, settings.kafka.startup_timeout_seconds
    admin = AdminClient({**client_config(kafka), "log_level": 0})
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        reason = err.str() if isinstance(err, KafkaError) else str(exc)
        raise StartupError(
            "kafka.bootstrap_servers",
            f"no broker at {kafka.bootstrap_servers} answered within {timeout:g} s ({reason})",
        ) from None
    topic = topics.get(settings.input.topic)
    if topic is None or topic.error is not None:
        raise StartupError(
            "input.topic",
            f"topic {settings.input.topic!r} does not exist on {kafka.bootstrap_servers} "
            "(or this principal may not describe it)",
        )
    return len(topic.partitions)


def max_message_bytes(settings: Settings, topic: str) -> int:
    """The largest message ``topic`` takes: its ``max.message.bytes`` (the broker's
    ``message.max.bytes`` unless the topic overrides it)."""
    admin = AdminClient(client_config(settings.kafka))
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    timeout = settings.kafka.startup_timeout_seconds
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
    except KafkaException as exc:
        raise BrokerError(f"reading the configs of {topic}: {exc}") from None
    return int(configs["max.message.bytes"].value)


def snapshot_topic_config(settings: Settings) -> dict[str, str]:
    return {
        "cleanup.policy": "delete",
        "retention.ms": "-1",  # by size only: a model stopped for long must still find its last snapshot
        "retention.bytes": str(settings.snapshot.retention_bytes),
        "max.message.bytes": str(settings.snapshot.max_message_bytes + (1 << 20)),
    }


def ensure_topics(settings: Settings, input_partitions: int | None = None) -> list[str]:
    """Create the snapshot topic (one partition: versions are ordered) and the dead-letter topic
    when missing; create the input topic only when ``input_partitions`` is given (`stream-learner
    topics create`, demo, benchmarks). Returns the topics it created."""
    timeout = settings.kafka.startup_timeout_seconds
    admin = AdminClient(client_config(settings.kafka))
    wanted = [
        NewTopic(settings.snapshot.topic, 1, config=snapshot_topic_config(settings)),
        NewTopic(settings.dead_letter.topic, 1),
    ]
    if settings.serving.publish_form:  # the serving form: a snapshot topic of its own
        topic = settings.serving.form_topic_for(settings.snapshot.topic)
        wanted.append(NewTopic(topic, 1, config=snapshot_topic_config(settings)))
    if input_partitions:
        wanted.append(NewTopic(settings.input.topic, input_partitions))
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerError(
            f"no answer from the brokers at {settings.kafka.bootstrap_servers}: {exc}"
        ) from None
    missing = [t for t in wanted if t.topic not in existing]
    created = []
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items() if missing else []:
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"creating topic {topic}: {exc.args[0].str()}") from None
    for topic in created:
        _partitions_once_visible(admin, topic, timeout)
    partitions = _partitions_once_visible(admin, settings.snapshot.topic, timeout)
    if partitions != 1:
        raise RuntimeError(
            f"snapshot topic {settings.snapshot.topic} has {partitions} partitions; it must have 1"
        )
    return created


def _partitions_once_visible(admin: AdminClient, topic: str, timeout: float) -> int:
    """The topic's partition count, waiting until a just-created topic shows in the metadata with
    leaders (the controller's view reaches the brokers a moment after the creation succeeds)."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic, timeout=timeout).topics[topic]
        ready = (
            meta.error is None and meta.partitions and all(p.leader >= 0 for p in meta.partitions.values())
        )
        if ready or time.monotonic() > deadline:
            return len(meta.partitions)
        time.sleep(0.1)


def delete_topics(kafka: KafkaSettings, names: list[str], timeout: float = 30.0) -> None:
    """Delete the topics that exist and wait until they are gone (deletion completes asynchronously)."""
    admin = AdminClient(client_config(kafka))
    existing = [n for n in names if n in admin.list_topics(timeout=timeout).topics]
    for future in admin.delete_topics(existing, operation_timeout=timeout).values() if existing else []:
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while set(names) & set(admin.list_topics(timeout=timeout).topics) and time.monotonic() < deadline:
        time.sleep(0.2)


def topic_messages(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> int | None:
    """How many messages the topic's partitions hold (high minus low watermarks), or None when the
    topic does not exist. Raises `BrokerError` when the cluster does not answer."""
    admin = AdminClient(client_config(kafka))
    try:
        meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise BrokerError(f"reading the metadata of {topic}: {exc.args[0]}") from None
    if meta is None or meta.error is not None:
        return None
    consumer = Consumer(
        client_config(kafka, {"group.id": "stream-learner-probe", "enable.auto.commit": False})
    )
    try:
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            total += max(0, high - low)
        return total
    except KafkaException as exc:
        raise BrokerError(f"reading the offsets of {topic}: {exc.args[0]}") from None
    finally:
        consumer.close()
