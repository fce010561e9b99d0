"""Operator requests to the active learner of a model, as small JSON records on its control topic.

`stream-learner rollback` writes a request (`send`); the active instance reads them
(`ControlReader`, polled by `stream_learner.runtime.rollback`) and records in every snapshot where
to read next (``control.next`` in its state), so a restart neither applies an old request again
nor misses one made while no instance was active. Only the active instance reads; a zombie that read
a request too is fenced by its transactional id at its next commit, so only one instance can publish
what a request asks for.

A record's key is the model name; its value is JSON:
``{"action": "rollback" | "accept", "to_version": V, "request": id, "requested_ms": t,
"expires_ms": t}`` (``to_version`` for a rollback only). Nothing is unpickled: a record that is not
such an object is reported and skipped. The topic is not signed: whoever may write to it can ask for
a rollback to any committed version (never to a state the learner did not publish); restrict it by
ACL as the snapshot topic.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_learner.config import Settings
from stream_learner.errors import BrokerError

log = logging.getLogger(__name__)

Action = Literal["rollback", "accept"]


def control_topic(settings: Settings) -> str:
    """The model's control topic: ``serving.control_topic``, or ``<snapshot.topic>.control``."""
    return settings.serving.control_topic or f"{settings.snapshot.topic}.control"


@dataclass(frozen=True)
class ControlRequest:
    action: Action
    request: str
    requested_ms: int
    expires_ms: int
    to_version: int | None = None

    @staticmethod
    def new(action: Action, ttl_seconds: float, to_version: int | None = None) -> ControlRequest:
        now = int(time.time() * 1000)
        return ControlRequest(action, uuid.uuid4().hex[:12], now, now + int(ttl_seconds * 1000), to_version)

    @staticmethod
    def parse(value: bytes | None) -> ControlRequest:
        """The request in a record's value; `ValueError` saying what is wrong with it."""
        try:
            data: Any = json.loads(value or b"")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        action, version = data.get("action"), data.get("to_version")
        if action not in ("rollback", "accept"):
            raise ValueError(f"unknown action {action!r}")
        if action == "rollback" and (type(version) is not int or version < 1):
            raise ValueError(f"a rollback needs a positive integer to_version, not {version!r}")
        fields = ("request", "requested_ms", "expires_ms")
        if not isinstance(data.get("request"), str) or any(type(data.get(k)) is not int for k in fields[1:]):
            raise ValueError(f"{', '.join(fields)} missing or of the wrong type")
        return ControlRequest(
            action,
            data["request"][:64],
            data["requested_ms"],
            data["expires_ms"],
            version if action == "rollback" else None,
        )

    def expired(self, now_ms: int) -> bool:
        return now_ms > self.expires_ms


def ensure_control_topic(settings: Settings) -> str:
    """Create the control topic (one partition) when it is missing; return its name."""
    topic, timeout = control_topic(settings), settings.kafka.startup_timeout_seconds
    admin = AdminClient(settings.kafka.client_config())
    if topic not in admin.list_topics(timeout=timeout).topics:
        future = admin.create_topics([NewTopic(topic, 1)], operation_timeout=timeout)[topic]
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"creating topic {topic}: {exc.args[0].str()}") from None
    return topic


def send(settings: Settings, request: ControlRequest) -> int:
    """Write ``request`` for the active learner of ``model.name``; return its offset."""
    topic = ensure_control_topic(settings)
    producer = Producer({**settings.kafka.client_config(), "enable.idempotence": True})
    delivered: list[Any] = []
    producer.produce(
        topic,
        key=settings.model.name.encode(),
        value=json.dumps(asdict(request)).encode(),
        on_delivery=lambda err, msg: delivered.append(err or msg),
    )
    producer.flush(settings.kafka.startup_timeout_seconds)
    if not delivered or isinstance(delivered[0], KafkaError):
        problem = delivered[0].str() if delivered else "no acknowledgement in time"
        raise BrokerError(f"writing the request to {topic}: {problem}")
    offset = delivered[0].offset()
    assert isinstance(offset, int)
    return offset


class ControlReader:
    """Reads the requests for one model from its control topic, from ``start`` (default: the end)."""

    def __init__(self, settings: Settings, start: int | None) -> None:
        self.topic = control_topic(settings)
        self.key = settings.model.name.encode()
        timeout = settings.kafka.startup_timeout_seconds
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": f"stream-learner-control-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",  # a recorded position that retention passed
            }
        )
        tp = TopicPartition(self.topic, 0)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(f"reading the offsets of {self.topic}: {exc}") from None
        self.position = high if start is None else max(start, low)
        self._consumer.assign([TopicPartition(self.topic, 0, self.position)])

    def poll(self) -> list[tuple[int, ControlRequest | str]]:
        """Records read since the last call, without waiting: (offset, the request, or what is wrong
        with the record). Other models' records are passed over."""
        out: list[tuple[int, ControlRequest | str]] = []
        for msg in self._consumer.consume(100, 0):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise BrokerError(f"reading {self.topic}: {err.str()}")
                continue
            offset = msg.offset()
            assert isinstance(offset, int)
            self.position = offset + 1
            if msg.key() != self.key:
                continue
            try:
                out.append((offset, ControlRequest.parse(msg.value())))
            except ValueError as exc:
                out.append((offset, str(exc)))
        return out

    def close(self) -> None:
        self._consumer.close()
