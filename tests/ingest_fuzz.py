"""Malformed payloads for the fuzz tests (decoder and running job), and a reference verdict.

`malformed` makes, in turn: truncated encodings, random bytes, flipped bytes, records written with a
wrong field type, and huge strings (ids over the limit, absurd length prefixes). `reference` judges
one payload with fastavro, one record at a time, and the validation rules written out plainly.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import fastavro
import numpy as np

from stream_learner.avro_schemas import load_schema
from stream_learner.ingest.codec import USER_EVENT_SCHEMA, encode_event
from stream_learner.ingest.events import EVENT_LABELS

NOW = time.time()
NOW_MS = int(NOW * 1000)
MAX_AGE_MS, MAX_SKEW_MS, MAX_ID = 30 * 86_400_000, 300_000, 1024
MAX_EVENT_TYPE, MAX_CONTEXT = 64, 1024  # the defaults of validation.max_event_type_bytes, max_context_bytes
REASONS = {
    "decode", "empty_id", "id_too_long", "field_too_long", "too_old", "future", "unknown_event_type",
    "bad_label",
}  # fmt: skip
ALPHABET = [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_:/", "é", "ß", "中", "😀"]


def _text(rng: np.random.Generator, low: int, high: int) -> str:
    return "".join(rng.choice(ALPHABET, int(rng.integers(low, high))))


def valid_record(rng: np.random.Generator) -> dict[str, Any]:
    types = sorted(EVENT_LABELS)
    return {
        "user_id": _text(rng, 1, 30),
        "item_id": _text(rng, 1, 30),
        "event_type": str(rng.choice(types)),
        "timestamp": NOW_MS - int(rng.integers(0, 86_400_000)),
        "label": None if rng.random() < 0.5 else float(rng.random()),
        "context": {_text(rng, 1, 8): _text(rng, 0, 20) for _ in range(int(rng.integers(0, 3)))},
    }


def _write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def _evil(rng: np.random.Generator) -> bytes:
    """A record written with one field of the wrong type."""
    fields = {f["name"]: f["type"] for f in load_schema("user_event")["fields"]}
    rec = valid_record(rng)
    name, (kind, value) = list(
        {
            "user_id": ("long", int(rng.integers(-(10**12), 10**12))),
            "item_id": ("double", float(rng.normal())),
            "event_type": ("int", int(rng.integers(-1000, 1000))),
            "timestamp": ("string", _text(rng, 0, 12)),
            "label": ("string", _text(rng, 0, 6)),
            "context": ({"type": "array", "items": "long"}, [int(x) for x in rng.integers(0, 99, 3)]),
        }.items()
    )[int(rng.integers(0, 6))]
    fields[name] = kind
    rec[name] = value
    schema = {"type": "record", "name": "Evil", "fields": [{"name": k, "type": t} for k, t in fields.items()]}
    return _write(schema, rec)


def _huge(rng: np.random.Generator) -> bytes:
    rec = valid_record(rng)
    choice = int(rng.integers(0, 4))
    if choice == 3:  # a context value (used as a field or not) beyond its limit
        rec["context"][_text(rng, 1, 8)] = "v" * int(rng.integers(MAX_CONTEXT + 1, 20_000))
        return encode_event(rec)
    if choice == 0:
        rec[str(rng.choice(["user_id", "item_id"]))] = "x" * int(rng.integers(MAX_ID + 1, 20_000))
        return encode_event(rec)
    if choice == 1:
        rec["event_type"] = "click" * int(rng.integers(2, 2000))
        return encode_event(rec)
    claimed = int(rng.integers(1 << 20, 1 << 62))  # a length prefix far beyond the message
    zigzag, prefix = claimed << 1, bytearray()
    while zigzag > 0x7F:
        prefix.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    return bytes(prefix) + bytes([zigzag]) + b"abc"


def malformed(rng: np.random.Generator, n: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(n):
        kind = i % 5
        if kind == 0:  # truncated
            enc = encode_event(valid_record(rng))
            out.append(enc[: int(rng.integers(0, len(enc)))])
        elif kind == 1:  # random bytes
            out.append(rng.bytes(int(rng.integers(1, 120))))
        elif kind == 2:  # flipped bytes
            enc = bytearray(encode_event(valid_record(rng)))
            for at in rng.integers(0, len(enc), int(rng.integers(1, 4))):
                enc[at] ^= int(rng.integers(1, 256))
            out.append(bytes(enc))
        elif kind == 3:
            out.append(_evil(rng))
        else:
            out.append(_huge(rng))
    return out


def reference(value: bytes | None, now_ms: int = NOW_MS) -> str | None:
    """The rejection reason of one payload judged at ``now_ms``, or None when it is a valid event."""
    if not value:
        return "decode"
    buf = io.BytesIO(value)
    try:
        record = fastavro.schemaless_reader(buf, USER_EVENT_SCHEMA, None)
    except Exception:  # fastavro raises many types on bad bytes
        return "decode"
    if buf.tell() != len(value):
        return "decode"
    for name in ("user_id", "item_id"):
        if not record[name]:
            return "empty_id"
        if len(record[name].encode()) > MAX_ID:
            return "id_too_long"
    texts = [record["event_type"], *record["context"], *record["context"].values()]
    limits = [MAX_EVENT_TYPE] + [MAX_CONTEXT] * (2 * len(record["context"]))
    if any(len(t.encode()) > limit for t, limit in zip(texts, limits, strict=True)):
        return "field_too_long"
    if record["timestamp"] < now_ms - MAX_AGE_MS:
        return "too_old"
    if record["timestamp"] > now_ms + MAX_SKEW_MS:
        return "future"
    if record["event_type"].lower() not in EVENT_LABELS:
        return "unknown_event_type"
    label = record["label"]
    if label is not None and not (math.isfinite(label) and 0 <= label <= 1):
        return "bad_label"
    return None
