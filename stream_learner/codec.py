"""Avro decoding and validation of input messages, straight into `EventBatch` columns.

The codec takes raw messages (anything with ``value()``, ``partition()``, ``offset()``) and returns
the valid events as columns plus the rejected messages with their reason. It never touches Kafka.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import fastavro
import numpy as np

from stream_learner.errors import DecodeError
from stream_learner.events import EVENT_LABELS, MISSING_KEY, EventBatch, hash_id


class RawMessage(Protocol):
    def value(self) -> bytes | None: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...


@dataclass(frozen=True)
class Rejected:
    """An input message that did not become an event, and why."""

    message: Any
    reason: str
    detail: str


@dataclass(frozen=True)
class DecodeResult:
    batch: EventBatch
    rejected: list[Rejected]


def load_schema(name: str) -> dict[str, Any]:
    """A bundled Avro schema (``user_event`` or ``model_snapshot``) as parsed JSON."""
    text = resources.files("stream_learner").joinpath("schemas", f"{name}.avsc").read_text()
    return json.loads(text)


USER_EVENT_SCHEMA = fastavro.parse_schema(load_schema("user_event"))


def encode_event(event: dict[str, Any], schema: Any = USER_EVENT_SCHEMA) -> bytes:
    """Schemaless Avro bytes of one event (what producers write to the input topic)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, event)
    return buf.getvalue()


class Decoder:
    """Decodes plain schemaless Avro written with `writer_schema` and validates each event."""

    def __init__(
        self,
        context_fields: Sequence[str] = (),
        writer_schema: Path | None = None,
        max_age_seconds: float = 30 * 86400.0,
        max_future_skew_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        writer = json.loads(writer_schema.read_text()) if writer_schema else load_schema("user_event")
        self._writer = fastavro.parse_schema(writer)
        self._reader = USER_EVENT_SCHEMA
        self._same_schema = writer == load_schema("user_event")
        self._context_fields = list(context_fields)
        self._max_age_ms = int(max_age_seconds * 1000)
        self._max_skew_ms = int(max_future_skew_seconds * 1000)
        self._clock = clock

    def decode(self, messages: Sequence[RawMessage]) -> DecodeResult:
        now_ms = int(self._clock() * 1000)
        oldest, newest = now_ms - self._max_age_ms, now_ms + self._max_skew_ms
        users: list[int] = []
        items: list[int] = []
        contexts: list[list[int]] = []
        labels: list[float] = []
        times: list[int] = []
        parts: list[int] = []
        offsets: list[int] = []
        item_ids: list[str] = []
        rejected: list[Rejected] = []
        for msg in messages:
            try:
                record = self._read(msg.value())
                label = _validate(record, oldest, newest)
            except DecodeError as err:
                rejected.append(Rejected(msg, err.reason, err.detail))
                continue
            users.append(hash_id(record["user_id"]))
            items.append(hash_id(record["item_id"]))
            if self._context_fields:
                ctx = record["context"]
                contexts.append([hash_id(ctx[f]) if f in ctx else MISSING_KEY for f in self._context_fields])
            labels.append(label)
            times.append(record["timestamp"])
            parts.append(msg.partition())
            offsets.append(msg.offset())
            item_ids.append(record["item_id"])
        n = len(labels)
        batch = EventBatch(
            user=np.array(users, dtype=np.int64),
            item=np.array(items, dtype=np.int64),
            context=np.array(contexts, dtype=np.int64).reshape(n, len(self._context_fields)),
            label=np.array(labels, dtype=np.float32),
            timestamp_ms=np.array(times, dtype=np.int64),
            partition=np.array(parts, dtype=np.int32),
            offset=np.array(offsets, dtype=np.int64),
            item_ids=np.array(item_ids, dtype=object),
        )
        return DecodeResult(batch, rejected)

    def _read(self, value: bytes | None) -> dict[str, Any]:
        if not value:
            raise DecodeError("decode", "empty message value")
        buf = io.BytesIO(value)
        try:
            if self._same_schema:
                record = fastavro.schemaless_reader(buf, self._writer, None)
            else:
                record = fastavro.schemaless_reader(buf, self._writer, self._reader)
        except Exception as exc:  # fastavro raises many types on bad bytes
            raise DecodeError("decode", f"not a valid UserEvent: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(value):
            raise DecodeError("decode", f"{len(value) - buf.tell()} trailing bytes after the record")
        return record  # type: ignore[return-value]


def _validate(record: dict[str, Any], oldest_ms: int, newest_ms: int) -> float:
    """Check one decoded record; return its label."""
    if not record["user_id"]:
        raise DecodeError("empty_id", "user_id is empty")
    if not record["item_id"]:
        raise DecodeError("empty_id", "item_id is empty")
    ts = record["timestamp"]
    if ts < oldest_ms:
        raise DecodeError("too_old", f"timestamp {ts} is older than the maximum age")
    if ts > newest_ms:
        raise DecodeError("future", f"timestamp {ts} is ahead of the clock by more than the allowed skew")
    event_type = record["event_type"].lower()
    implied = EVENT_LABELS.get(event_type)
    if implied is None:
        raise DecodeError("unknown_event_type", f"unknown event_type {record['event_type']!r}")
    label = record["label"]
    if label is None:
        return implied
    if not math.isfinite(label) or not 0.0 <= label <= 1.0:
        raise DecodeError("bad_label", f"label {label} is not a finite number in [0, 1]")
    return float(label)
