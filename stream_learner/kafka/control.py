"""Operator requests to the active learner of a model, as small JSON records on its control topic.

`stream-learner rollback` writes a request (`send`); the active instance reads them
(`ControlReader`, polled by `stream_learner.runtime.rollback`) and records in every snapshot where
to read next (``control.next`` in its state), so a restart neither applies an old request again
nor misses one made while no instance was active. Only the active instance reads; a zombie that read
a request too is fenced by its transactional id at its next commit, so only one instance can publish
what a request asks for.

A record's key is the model name; its value is JSON:
``{"action": "rollback" | "accept", "to_version": V, "request": id, "requested_ms": t,
"expires_ms": t}`` (``to_version`` for a rollback only), at most `MAX_REQUEST_BYTES`. Nothing is
unpickled, and no record can stop the reader: one that is too large, not such an object, or nested
too deep is returned as `Refused` with the reason, and the learner skips it.

Requests are signed whenever snapshots are: with a signing key (``snapshot.signing_key``) `send`
puts an Ed25519 signature of `signed_message` (a context string, the key and the value) in the
header `SIGNATURE_HEADER`; the reader checks it with the ``verify`` it is given
(`stream_learner.snapshots.signing.Verifier.problem`), which refuses a bad signature, and an unsigned
request when signatures are required. Without signing, whoever may write to the topic can ask for a
rollback to any committed version (never to a state the learner did not publish): restrict it by ACL.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_learner.config import Settings
from stream_learner.errors import BrokerError
from stream_learner.kafka.clients import client_config

log = logging.getLogger(__name__)

Action = Literal["rollback", "accept"]
#: Why a control record is not applied (the ``reason`` label of
#: stream_learner_control_requests_refused_total): the record itself (`ControlReader`), or what it
#: asks for (`stream_learner.runtime.rollback`).
ControlRefusal = Literal[
    "too_large", "malformed", "signature", "expired", "unknown_version", "unrestorable", "spec"
]
#: The largest request value read (a request is about 150 bytes); larger ones are refused unparsed.
MAX_REQUEST_BYTES = 4096
#: The record header that carries a request's signature.
SIGNATURE_HEADER = "stream-learner.signature"
#: Checks a request's signature: (signed message, signature or None) -> None, or what is wrong.
Verify = Callable[[bytes, bytes | None], str | None]


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
        """The request in a record's value; `ValueError` saying what is wrong with it, whatever the
        bytes are (not UTF-8 JSON, nested too deep, not a request)."""
        try:
            data: Any = json.loads(value or b"")
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and int-size errors are ValueErrors
            raise ValueError(f"not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
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


@dataclass(frozen=True)
class Refused:
    """A control record that is not a request the learner may apply, and why."""

    reason: ControlRefusal
    detail: str


def signed_message(key: bytes, value: bytes) -> bytes:
    """What a request's signature covers: a context string (so that no snapshot signature can pass
    for one), the model name it is keyed by and the value."""
    return b"stream-learner control request\0" + len(key).to_bytes(4, "big") + key + value


def read_record(
    key: bytes, value: bytes | None, signature: bytes | None, verify: Verify | None
) -> ControlRequest | Refused:
    """The request a control record of model ``key`` holds, or why it is refused: too large,
    malformed, or (with ``verify``) not signed as it must be. Never raises on the record's bytes."""
    if value is not None and len(value) > MAX_REQUEST_BYTES:
        return Refused("too_large", f"{len(value)} bytes, more than a request's {MAX_REQUEST_BYTES}")
    if verify is not None:
        problem = verify(signed_message(key, value or b""), signature)
        if problem is not None:
            return Refused("signature", problem)
    try:
        return ControlRequest.parse(value)
    except ValueError as exc:
        return Refused("malformed", str(exc))


def ensure_control_topic(settings: Settings) -> str:
    """Create the control topic (one partition) when it is missing; return its name."""
    topic, timeout = control_topic(settings), settings.kafka.startup_timeout_seconds
    admin = AdminClient(client_config(settings.kafka))
    if topic not in admin.list_topics(timeout=timeout).topics:
        future = admin.create_topics([NewTopic(topic, 1)], operation_timeout=timeout)[topic]
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"creating topic {topic}: {exc.args[0].str()}") from None
    return topic


def send(settings: Settings, request: ControlRequest, sign: Callable[[bytes], bytes] | None = None) -> int:
    """Write ``request`` for the active learner of ``model.name``, signed with ``sign`` when given
    (`stream_learner.snapshots.signing.Signer`); return its offset."""
    topic = ensure_control_topic(settings)
    producer = Producer({**client_config(settings.kafka), "enable.idempotence": True})
    delivered: list[Any] = []
    key, value = settings.model.name.encode(), json.dumps(asdict(request)).encode()
    producer.produce(
        topic,
        key=key,
        value=value,
        headers=[(SIGNATURE_HEADER, sign(signed_message(key, value)))] if sign is not None else None,
        on_delivery=lambda err, msg: delivered.append(err or msg),
    )
    producer.flush(settings.kafka.startup_timeout_seconds)
    if not delivered or isinstance(delivered[0], KafkaError):
        problem = delivered[0].str() if delivered else "no acknowledgement in time"
        raise BrokerError(f"writing the request to {topic}: {problem}")
    offset = delivered[0].offset()
    assert isinstance(offset, int)
    return offset


def _signature(msg: Message) -> bytes | None:
    """The first signature header of a record (None when it has none)."""
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    value = next((v for name, v in pairs if name == SIGNATURE_HEADER), None)
    return value if isinstance(value, bytes) else None


class ControlReader:
    """Reads the requests for one model from its control topic, from ``start`` (default: the end);
    with ``verify``, only requests whose signature it accepts."""

    def __init__(self, settings: Settings, start: int | None, verify: Verify | None = None) -> None:
        self.topic = control_topic(settings)
        self.key = settings.model.name.encode()
        self.verify = verify
        timeout = settings.kafka.startup_timeout_seconds
        self._consumer = Consumer(
            {
                **client_config(settings.kafka),
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

    def poll(self) -> list[tuple[int, ControlRequest | Refused]]:
        """Records read since the last call, without waiting: (offset, the request, or why the
        record is refused). Other models' records are passed over."""
        out: list[tuple[int, ControlRequest | Refused]] = []
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
            out.append((offset, read_record(self.key, msg.value(), _signature(msg), self.verify)))
        return out

    def close(self) -> None:
        self._consumer.close()
