"""Avro decoding and validation of input messages, straight into `EventBatch` columns.

The codec takes raw messages (anything with ``value()``, ``partition()``, ``offset()``) and returns
the valid events as columns, the original messages of those events in the same order (what a late
event's dead letter needs), and the rejected messages with a reason. It never touches Kafka.

Formats: ``avro``, schemaless Avro written with the configured writer schema; ``confluent``, the
Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro) with writer schemas fetched
from a Schema Registry by id. Either way the bundled `UserEvent` schema is the reader schema, so
events written with an older schema read with its defaults. All messages of a batch are decoded and
validated together (`avro_columns`, `events.hash_slices`): no Python object per event.

Rejection reasons (the ``reason`` label of ``stream_learner_events_invalid_total``): ``decode`` (not
a readable record, or text that is not UTF-8), ``unknown_schema`` and ``incompatible_schema``
(Confluent format), ``empty_id``, ``id_too_long``, ``field_too_long`` (an event type, or any context
key or value, longer than its limit: every string of an event is bounded), ``too_old``, ``future``,
``unknown_event_type`` (case-insensitive), ``bad_label`` (not finite or outside [0, 1]).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
import numpy as np

from stream_learner.avro_schemas import load_schema
from stream_learner.config import Settings
from stream_learner.errors import ConfigError, IncompatibleSchema, UnknownSchema
from stream_learner.ingest.avro_columns import PADDING, Cursor, Op, RawEvents, compile_plan
from stream_learner.ingest.events import EVENT_LABELS, MISSING_KEY, EventBatch, RejectReason, hash_slices
from stream_learner.ingest.registry import SchemaRegistry, registry_from_settings

CONFLUENT_HEADER = 5


class RawMessage(Protocol):
    """What the codec reads of a message (typed as confluent-kafka's Message; a consumed message
    always has a partition and an offset)."""

    def value(self) -> bytes | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


@dataclass(frozen=True)
class Rejected:
    """An input message that did not become an event, and why."""

    message: Any
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class DecodeResult:
    batch: EventBatch
    rejected: list[Rejected]
    messages: list[Any]  # the message of each event in ``batch``, in the same order


USER_EVENT_SCHEMA = fastavro.parse_schema(load_schema("user_event"))


def encode_event(event: dict[str, Any], schema: Any = USER_EVENT_SCHEMA) -> bytes:
    """Schemaless Avro bytes of one event (what producers write to the input topic)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, event)
    return buf.getvalue()


def confluent_frame(schema_id: int, avro: bytes) -> bytes:
    """The Confluent wire format of an Avro body written with registry schema ``schema_id``."""
    return b"\0" + schema_id.to_bytes(4, "big") + avro


class Decoder:
    """Decodes a batch of messages into columns and validates every event."""

    def __init__(
        self,
        context_fields: Sequence[str] = (),
        writer_schema: Path | None = None,
        max_age_seconds: float = 30 * 86400.0,
        max_future_skew_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        *,
        wire_format: Literal["avro", "confluent"] = "avro",
        registry: SchemaRegistry | None = None,
        max_id_bytes: int = 1024,
        max_event_type_bytes: int = 64,
        max_context_bytes: int = 1024,
    ) -> None:
        if wire_format == "confluent" and registry is None:
            raise ConfigError("input.schema_registry_url", "the Confluent wire format needs a registry")
        self._context_fields = list(context_fields)
        self._max_age_ms = int(max_age_seconds * 1000)
        self._max_skew_ms = int(max_future_skew_seconds * 1000)
        self._max_id_bytes = max_id_bytes
        self._max_text_bytes = {
            "event_type": max_event_type_bytes,
            "context key": max_context_bytes,
            "context value": max_context_bytes,
        }
        self._clock = clock
        self._registry = registry
        self._plans: dict[int, Op | IncompatibleSchema] = {}
        self._plan: Op | None = None
        if wire_format == "avro":
            try:
                writer = json.loads(writer_schema.read_text()) if writer_schema else load_schema("user_event")
                self._plan = compile_plan(writer, self._context_fields)
            except (OSError, ValueError) as exc:  # unreadable, not JSON, or IncompatibleSchema
                raise ConfigError("input.writer_schema", f"{writer_schema}: {exc}") from None

    def decode(self, messages: Sequence[RawMessage]) -> DecodeResult:
        n = len(messages)
        if n == 0:
            return DecodeResult(EventBatch.empty(len(self._context_fields)), [], [])
        values = list(map(methodcaller("value"), messages))
        if None in values:  # a tombstone: rejected below as empty
            values = [v or b"" for v in values]
        lengths = np.fromiter(map(len, values), np.int64, n)
        data = np.frombuffer(b"".join(values) + bytes(PADDING), np.uint8)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        raw = RawEvents.allocate(n, len(self._context_fields))
        raw.reject(np.flatnonzero(lengths == 0), "decode", "empty message value")
        rows = np.flatnonzero(~raw.bad)
        if self._plan is not None:
            self._plan(Cursor(data, starts, ends, raw), rows)
        else:
            self._decode_confluent(data, starts, ends, rows, raw)
        self._validate(raw, data, int(self._clock() * 1000))
        valid = np.flatnonzero(~raw.bad)
        rejected = [
            Rejected(messages[i], raw.reason[i], raw.detail[i]) for i in np.flatnonzero(raw.bad).tolist()
        ]
        kept = list(messages) if len(valid) == n else [messages[i] for i in valid.tolist()]
        return DecodeResult(self._columns(raw, data, valid, kept), rejected, kept)

    # -- formats -------------------------------------------------------------------------------
    def _decode_confluent(
        self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray, raw: RawEvents
    ) -> None:
        short = rows[ends[rows] - starts[rows] < CONFLUENT_HEADER]
        raw.reject(short, "decode", f"shorter than the {CONFLUENT_HEADER}-byte Confluent header")
        rows = rows[~raw.bad[rows]]
        magic = data[starts[rows]]
        for byte in np.unique(magic[magic != 0]):
            raw.reject(rows[magic == byte], "decode", f"magic byte {byte}, not 0: not the Confluent format")
        rows = rows[magic == 0]
        at = starts[rows]
        ids = np.zeros(len(rows), np.int64)
        for k in range(1, CONFLUENT_HEADER):
            ids = (ids << 8) | data[at + k]
        cursor = Cursor(data, starts + CONFLUENT_HEADER, ends, raw)
        for schema_id in np.unique(ids):
            group = rows[ids == schema_id]
            plan = self._plan_for(int(schema_id))
            if isinstance(plan, UnknownSchema):
                raw.reject(group, "unknown_schema", str(plan))
            elif isinstance(plan, IncompatibleSchema):
                raw.reject(group, "incompatible_schema", f"schema id {schema_id}: {plan}")
            else:
                plan(cursor, group)

    def _plan_for(self, schema_id: int) -> Op | IncompatibleSchema | UnknownSchema:
        plan = self._plans.get(schema_id)
        if plan is not None:
            return plan
        assert self._registry is not None
        try:
            writer = self._registry.schema(schema_id)  # RegistryUnavailable propagates: stop the job
        except UnknownSchema as exc:
            return exc  # the registry remembers unknown ids for a while; do not cache them forever
        try:
            plan = compile_plan(writer, self._context_fields)
        except IncompatibleSchema as exc:
            plan = exc
        self._plans[schema_id] = plan
        return plan

    # -- validation ----------------------------------------------------------------------------
    def _validate(self, raw: RawEvents, data: np.ndarray, now_ms: int) -> None:
        """Reject events that decoded but are not valid; the first problem found is the reason."""
        self._check_utf8(raw, data)
        for name, length in (("user_id", raw.user_len), ("item_id", raw.item_len)):
            raw.reject(np.flatnonzero(length == 0), "empty_id", f"{name} is empty")
            too_long = np.flatnonzero(length > self._max_id_bytes)
            raw.reject(too_long, "id_too_long", f"{name} is longer than {self._max_id_bytes} bytes")
        for name, rows, _, length in raw.texts:
            limit = self._max_text_bytes.get(name)
            if limit is not None and (length > limit).any():
                raw.reject(rows[length > limit], "field_too_long", f"{name} is longer than {limit} bytes")
        ts = raw.timestamp
        old = np.flatnonzero(ts < now_ms - self._max_age_ms)
        raw.reject(old, "too_old", [f"timestamp {t} is older than the maximum age" for t in ts[old]])
        ahead = np.flatnonzero(ts > now_ms + self._max_skew_ms)
        why = "is ahead of the clock by more than the allowed skew"
        raw.reject(ahead, "future", [f"timestamp {t} {why}" for t in ts[ahead]])
        implied = self._implied_labels(raw, data)
        unknown = np.flatnonzero(np.isnan(implied) & ~raw.bad)
        types = [_text(data, raw.type_start[i], min(raw.type_len[i], 100)) for i in unknown]
        raw.reject(unknown, "unknown_event_type", [f"unknown event_type {t!r}" for t in types])
        explicit = raw.has_label
        label = np.where(explicit, raw.label, implied)
        bad = np.flatnonzero(explicit & ~((label >= 0) & (label <= 1)))  # NaN fails both
        raw.reject(bad, "bad_label", [f"label {raw.label[i]} is not a finite number in [0, 1]" for i in bad])
        raw.label = label.astype(np.float32)

    @staticmethod
    def _check_utf8(raw: RawEvents, data: np.ndarray) -> None:
        """Strings must be UTF-8: decode the few that are not plain ASCII, reject the ones that fail."""
        high = np.flatnonzero(data >= 0x80)  # few: mostly varint bytes
        if not len(high):
            return
        for name, rows, start, length in raw.texts:
            at = np.searchsorted(high, start)  # the first high byte at or after each string's start
            first = high[np.minimum(at, len(high) - 1)]
            for k in np.flatnonzero((at < len(high)) & (first < start + length) & ~raw.bad[rows]):
                try:
                    data[start[k] : start[k] + length[k]].tobytes().decode()
                except UnicodeDecodeError:
                    raw.reject(rows[k : k + 1], "decode", f"{name} is not valid UTF-8")

    @staticmethod
    def _implied_labels(raw: RawEvents, data: np.ndarray) -> np.ndarray:
        """The label each event type implies (case-insensitive); NaN for unknown types. A batch has
        few distinct types: each is looked up once, by the hash of its bytes."""
        rows = np.flatnonzero(~raw.bad)
        keys = hash_slices(data, raw.type_start[rows], raw.type_len[rows])
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        names = [_text(data, raw.type_start[rows[i]], raw.type_len[rows[i]]).lower() for i in first]
        labels = np.array([EVENT_LABELS.get(name, np.nan) for name in names], np.float32)
        implied = np.full(len(raw.bad), np.nan, np.float32)
        implied[rows] = labels[inverse.reshape(-1)]
        return implied

    # -- output --------------------------------------------------------------------------------
    def _columns(self, raw: RawEvents, data: np.ndarray, rows: np.ndarray, kept: list[Any]) -> EventBatch:
        item = hash_slices(data, raw.item_start[rows], raw.item_len[rows])
        context = np.full((len(rows), len(self._context_fields)), MISSING_KEY, np.int64)
        for j in range(len(self._context_fields)):
            present = np.flatnonzero(raw.ctx_len[rows, j] >= 0)
            at = rows[present]
            context[present, j] = hash_slices(data, raw.ctx_start[at, j], raw.ctx_len[at, j])
        # Original item ids (for serving's recent items): one str per distinct id, shared by reference.
        keys, first, inverse = np.unique(item, return_index=True, return_inverse=True)
        names = np.empty(len(keys), dtype=object)
        names[:] = [_text(data, raw.item_start[rows[i]], raw.item_len[rows[i]]) for i in first]
        return EventBatch(
            user=hash_slices(data, raw.user_start[rows], raw.user_len[rows]),
            item=item,
            context=context,
            label=raw.label[rows],
            timestamp_ms=raw.timestamp[rows],
            partition=np.fromiter(map(methodcaller("partition"), kept), np.int32, len(kept)),
            offset=np.fromiter(map(methodcaller("offset"), kept), np.int64, len(kept)),
            item_ids=names[inverse.reshape(-1)],
        )


def _text(data: np.ndarray, start: int, length: int) -> str:
    return data[start : start + length].tobytes().decode("utf-8", "replace")


def make_decoder(settings: Settings, clock: Callable[[], float]) -> Decoder:
    """The decoder ``[input]`` and ``[validation]`` configure."""
    i, v = settings.input, settings.validation
    registry = registry_from_settings(i) if i.format == "confluent" else None
    return Decoder(
        settings.model.context_fields,
        i.writer_schema,
        v.max_age_seconds,
        v.max_future_skew_seconds,
        clock,
        wire_format=i.format,
        registry=registry,
        max_id_bytes=v.max_id_bytes,
        max_event_type_bytes=v.max_event_type_bytes,
        max_context_bytes=v.max_context_bytes,
    )
