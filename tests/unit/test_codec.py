"""Decoding and validation: columns equal to a per-record fastavro reading, schema resolution, every
rejection reason, and the Confluent wire format against a Schema Registry (an HTTP stub)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.avro_schemas import load_schema
from stream_learner.errors import ConfigError, RegistryUnavailable
from stream_learner.ingest.codec import USER_EVENT_SCHEMA, Decoder, confluent_frame, encode_event
from stream_learner.ingest.events import EVENT_LABELS, MISSING_KEY, hash_id
from stream_learner.ingest.registry import SchemaRegistry
from tests import ingest_support
from tests.ingest_fuzz import NOW, NOW_MS
from tests.ingest_support import FakeMessage, encoded, messages, registry_stub

DAY_MS = 86_400_000


def event(**fields: Any) -> dict[str, Any]:
    """A valid event stamped at the decoder's frozen clock (however long the test run has taken)."""
    return ingest_support.event(**{"timestamp": NOW_MS, **fields})


def _clock() -> float:
    return NOW


def _decoder(**kw: Any) -> Decoder:
    return Decoder(clock=_clock, **kw)


def _zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return _zigzag(len(raw)) + raw


# -- valid events: the same columns as fastavro --------------------------------------------------
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
_RECORDS = st.fixed_dictionaries(
    {
        "user_id": _TEXT,
        "item_id": _TEXT,
        "event_type": st.sampled_from(sorted(EVENT_LABELS)).flatmap(
            lambda t: st.sampled_from([t, t.upper(), t.capitalize()])
        ),
        "timestamp": st.integers(int(NOW * 1000) - 29 * DAY_MS, int(NOW * 1000) + 299_000),
        "label": st.none() | st.floats(0, 1, width=32),
        "context": st.dictionaries(st.sampled_from(["device", "country", "page", "dev"]), _TEXT, max_size=3),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_RECORDS, min_size=1, max_size=30))
def test_valid_events_decode_to_the_columns_fastavro_reads(records: list[dict[str, Any]]) -> None:
    fields = ["device", "country"]
    result = _decoder(context_fields=fields).decode(messages(encoded(records), partition=2, first_offset=7))
    assert result.rejected == []
    expected = [
        fastavro.schemaless_reader(io.BytesIO(encode_event(r)), USER_EVENT_SCHEMA, None) for r in records
    ]
    batch = result.batch
    assert batch.user.tolist() == [hash_id(r["user_id"]) for r in expected]
    assert batch.item.tolist() == [hash_id(r["item_id"]) for r in expected]
    assert batch.item_ids.tolist() == [r["item_id"] for r in expected]
    assert batch.timestamp_ms.tolist() == [r["timestamp"] for r in expected]
    labels = [EVENT_LABELS[r["event_type"].lower()] if r["label"] is None else r["label"] for r in expected]
    assert batch.label.tolist() == pytest.approx(labels)
    context = [
        [hash_id(r["context"][f]) if f in r["context"] else MISSING_KEY for f in fields] for r in expected
    ]
    assert batch.context.tolist() == context
    assert batch.partition.tolist() == [2] * len(records)
    assert batch.offset.tolist() == list(range(7, 7 + len(records)))
    assert [m.offset() for m in result.messages] == batch.offset.tolist()


def test_a_repeated_context_key_keeps_the_last_value_like_a_dict() -> None:
    head = b"".join(_string(s) for s in ("u", "i", "view")) + _zigzag(int(NOW * 1000)) + _zigzag(0)
    # Two map blocks, the second with a negative count and a byte size, both setting "device".
    second = _string("device") + _string("tablet")
    body = _zigzag(1) + _string("device") + _string("phone") + _zigzag(-1) + _zigzag(len(second)) + second
    value = head + body + _zigzag(0)
    assert fastavro.schemaless_reader(io.BytesIO(value), USER_EVENT_SCHEMA, None)["context"] == {
        "device": "tablet"
    }
    result = _decoder(context_fields=["device"]).decode(messages([value]))
    assert result.batch.context.tolist() == [[hash_id("tablet")]]


# -- schema resolution ---------------------------------------------------------------------------
def _write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


OLDER = {
    "type": "record",
    "name": "UserEvent",
    "fields": [
        {"name": "user_id", "type": "string"},
        {"name": "item_id", "type": "bytes"},
        {"name": "event_type", "type": "string"},
        {"name": "timestamp", "type": "int"},
    ],
}

NEWER = {
    "type": "record",
    "name": "UserEvent",
    "namespace": "io.streamlearner.v2",
    "fields": [
        {"name": "session", "type": ["null", "string"], "default": None},
        {"name": "timestamp", "type": "long"},
        {"name": "item_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "score", "type": "double"},
        {"name": "label", "type": ["int", "null", "float"]},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "meta",
            "type": {
                "type": "record",
                "name": "Meta",
                "fields": [
                    {"name": "flag", "type": "boolean"},
                    {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 3}},
                    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
                    {"name": "weights", "type": {"type": "map", "values": "float"}},
                ],
            },
        },
        {"name": "event_type", "type": "string"},
        {"name": "again", "type": ["null", "Meta"]},
        {"name": "context", "type": {"type": "map", "values": "bytes"}},
    ],
}


def _schema_file(tmp_path: Path, schema: dict[str, Any]) -> Path:
    path = tmp_path / "writer.avsc"
    path.write_text(json.dumps(schema))
    return path


def test_events_of_an_older_writer_schema_read_with_the_reader_defaults(tmp_path: Path) -> None:
    ts = int(NOW * 1000) - 1000
    value = _write(
        OLDER, {"user_id": "u9", "item_id": b"i9", "event_type": "purchase", "timestamp": ts % (1 << 31)}
    )
    decoder = _decoder(
        writer_schema=_schema_file(tmp_path, OLDER), context_fields=["device"], max_age_seconds=3e9
    )
    result = decoder.decode(messages([value]))
    assert result.rejected == []
    assert result.batch.user.tolist() == [hash_id("u9")] and result.batch.item_ids.tolist() == ["i9"]
    assert result.batch.label.tolist() == [1.0]  # label null by default: implied by the type
    assert result.batch.timestamp_ms.tolist() == [ts % (1 << 31)]  # int promoted to long
    assert result.batch.context.tolist() == [[MISSING_KEY]]  # context {} by default


def test_a_newer_writer_schema_with_other_fields_and_order_reads_the_known_fields(tmp_path: Path) -> None:
    meta = {"flag": True, "digest": b"abc", "kind": "B", "weights": {"x": 1.5, "y": -2.0}}
    ts = int(NOW * 1000)
    records = [
        {"session": "s", "timestamp": ts, "item_id": "i1", "user_id": "u1", "score": 0.25, "label": 0.75,
         "tags": ["a", "b"], "meta": meta, "event_type": "VIEW", "again": meta, "context": {"device": b"tv"}},
        {"session": None, "timestamp": ts + 1, "item_id": "i2", "user_id": "u2", "score": 1e300, "label": 1,
         "tags": [], "meta": meta, "event_type": "view", "again": None, "context": {}},
        {"session": None, "timestamp": ts + 2, "item_id": "i3", "user_id": "u3", "score": -1.0, "label": None,
         "tags": ["x"] * 50, "meta": meta, "event_type": "click", "again": None, "context": {"page": b"p"}},
    ]  # fmt: skip
    decoder = _decoder(writer_schema=_schema_file(tmp_path, NEWER), context_fields=["device"])
    result = decoder.decode(messages([_write(NEWER, r) for r in records]))
    assert result.rejected == []
    assert result.batch.user.tolist() == [hash_id(u) for u in ("u1", "u2", "u3")]
    assert result.batch.label.tolist() == [0.75, 1.0, 1.0]
    assert result.batch.timestamp_ms.tolist() == [ts, ts + 1, ts + 2]
    assert result.batch.context.tolist() == [[hash_id("tv")], [MISSING_KEY], [MISSING_KEY]]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s["fields"].pop(0), "user_id"),
        (lambda s: s["fields"][3].update(type="string"), "timestamp"),
        (lambda s: s.update(type="enum", symbols=["A"]), "not a record"),
    ],
)
def test_a_writer_schema_the_reader_cannot_read_is_a_config_error(
    tmp_path: Path, change, problem: str
) -> None:
    schema = json.loads(json.dumps(OLDER))
    change(schema)
    with pytest.raises(ConfigError, match=problem) as err:
        _decoder(writer_schema=_schema_file(tmp_path, schema))
    assert err.value.setting == "input.writer_schema"


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"user_id": ""}, "empty_id"),
        ({"item_id": ""}, "empty_id"),
        ({"user_id": "u" * 1025}, "id_too_long"),
        ({"item_id": "é" * 513}, "id_too_long"),  # 1026 bytes of UTF-8
        ({"timestamp": NOW_MS - 31 * DAY_MS}, "too_old"),
        ({"timestamp": NOW_MS + 301_000}, "future"),
        ({"timestamp": -(1 << 62)}, "too_old"),
        ({"event_type": "like"}, "unknown_event_type"),
        ({"event_type": ""}, "unknown_event_type"),
        ({"event_type": "click "}, "unknown_event_type"),
        ({"label": math.nan}, "bad_label"),
        ({"label": math.inf}, "bad_label"),
        ({"label": -0.01}, "bad_label"),
        ({"label": 1.5}, "bad_label"),
    ],
)
def test_invalid_events_are_rejected_with_their_reason(fields: dict[str, Any], reason: str) -> None:
    good = encode_event(event())
    result = _decoder().decode(messages([good, encode_event(event(**fields)), good]))
    assert [(r.message.offset(), r.reason) for r in result.rejected] == [(1, reason)]
    assert result.rejected[0].detail
    assert result.batch.offset.tolist() == [0, 2]


def _bad_utf8() -> bytes:
    ts = _zigzag(NOW_MS)
    return _zigzag(2) + b"\xc3\x28" + _string("i") + _string("view") + ts + _zigzag(0) + _zigzag(0)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (None, "empty message value"),
        (b"", "empty message value"),
        (encode_event(event())[:-1], "truncated"),
        (encode_event(event()) + b"\0", "1 trailing bytes"),
        (b"\xff" * 12, "not a valid varint"),
        (_zigzag(-3) + b"abc", "negative length"),
        (_zigzag(1 << 40) + b"x", "truncated"),
        (
            encode_event(event(label=0.5))[:-6] + _zigzag(7) + encode_event(event(label=0.5))[-5:],
            "union branch",
        ),
        (_bad_utf8(), "not valid UTF-8"),
    ],
)
def test_undecodable_messages_are_rejected_as_decode(value: bytes | None, detail: str) -> None:
    result = _decoder().decode([FakeMessage(value, 0, 5), FakeMessage(encode_event(event()), 0, 6)])
    assert [(r.message.offset(), r.reason) for r in result.rejected] == [(5, "decode")]
    assert detail in result.rejected[0].detail
    assert result.batch.offset.tolist() == [6] and len(result.messages) == 1


def test_the_messages_of_the_valid_events_stay_aligned_with_the_rows() -> None:
    values = encoded([event(user_id=f"u{i}", label=float(i % 2)) for i in range(10)])
    values[3] = b"junk"
    values[7] = encode_event(event(item_id=""))
    result = _decoder().decode(messages(values, first_offset=100))
    assert [m.offset() for m in result.messages] == result.batch.offset.tolist()
    assert result.batch.offset.tolist() == [100 + i for i in range(10) if i not in (3, 7)]
    assert result.batch.user.tolist() == [hash_id(f"u{i}") for i in range(10) if i not in (3, 7)]
    assert {r.message.offset(): r.reason for r in result.rejected} == {103: "decode", 107: "empty_id"}


def test_an_empty_batch_decodes_to_an_empty_batch() -> None:
    result = _decoder(context_fields=["a"]).decode([])
    assert len(result.batch) == 0 and result.batch.context.shape == (0, 1)


# -- the Confluent wire format -------------------------------------------------------------------
def _confluent(url: str, **kw: Any) -> Decoder:
    registry = SchemaRegistry(url, sleep=lambda s: None, **kw)
    return _decoder(wire_format="confluent", registry=registry)


def test_confluent_messages_decode_with_the_schema_their_id_names_fetched_once() -> None:
    with registry_stub({1: load_schema("user_event"), 7: OLDER}) as stub:
        decoder = _confluent(stub.url)
        ts = NOW_MS % (1 << 31)
        older = _write(OLDER, {"user_id": "old", "item_id": b"i", "event_type": "view", "timestamp": ts})
        batch = [confluent_frame(1, encode_event(event(user_id="new"))), confluent_frame(7, older)]
        for _ in range(3):
            result = Decoder.decode(decoder, messages(batch))
        assert sorted(stub.requests) == ["/schemas/ids/1", "/schemas/ids/7"]
    assert result.rejected[0].reason == "too_old"  # the int timestamp is from 1970: decoded, then judged
    assert result.batch.user.tolist() == [hash_id("new")]


def test_confluent_messages_with_unknown_or_unreadable_schemas_are_rejected_not_the_others() -> None:
    unreadable = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    broken = {"type": "record", "name": "NoFields"}
    recursive = json.loads(json.dumps(OLDER))
    recursive["fields"].append({"name": "next", "type": ["null", "UserEvent"]})
    schemas = {1: load_schema("user_event"), 2: unreadable, 3: broken, 4: recursive}
    with registry_stub(schemas) as stub:
        decoder = _confluent(stub.url)
        good = encode_event(event())
        batch = [
            confluent_frame(1, good),
            confluent_frame(99, good),
            confluent_frame(2, good),
            b"\x01" + good,
            b"\0\0\0",
            confluent_frame(99, good),
            confluent_frame(3, good),
            confluent_frame(4, good),
        ]
        first = decoder.decode(messages(batch))
        second = decoder.decode(messages(batch))
        assert stub.requests.count("/schemas/ids/99") == 1  # an unknown id is remembered for a while
    reasons = {r.message.offset(): r.reason for r in first.rejected}
    assert reasons == {
        1: "unknown_schema",
        2: "incompatible_schema",
        3: "decode",
        4: "decode",
        5: "unknown_schema",
        6: "incompatible_schema",
        7: "incompatible_schema",
    }
    assert {r.message.offset(): r.reason for r in second.rejected} == reasons
    assert first.batch.offset.tolist() == [0]


def test_an_unreachable_registry_stops_decoding_instead_of_rejecting_good_events() -> None:
    with registry_stub({1: load_schema("user_event")}) as stub:
        stub.status = 503
        decoder = _confluent(stub.url, auth=("svc", "s3cret"))
        with pytest.raises(RegistryUnavailable, match="503") as err:
            decoder.decode(messages([confluent_frame(1, encode_event(event()))]))
        assert len(stub.requests) == 3  # retried
        assert stub.auth_headers[0] == "Basic c3ZjOnMzY3JldA=="
        assert "s3cret" not in str(err.value)
        stub.status = 200
        assert len(decoder.decode(messages([confluent_frame(1, encode_event(event()))])).batch) == 1


def test_confluent_format_needs_a_registry() -> None:
    with pytest.raises(ConfigError, match="registry"):
        Decoder(wire_format="confluent")


# -- cost ------------------------------------------------------------------------------------------
def test_decoding_builds_no_python_object_per_event() -> None:
    """Item ids are the only strings made, one per distinct id, shared by reference."""
    values = encoded([event(user_id=f"u{i}", item_id=f"i{i % 5}") for i in range(1000)])
    batch = _decoder().decode(messages(values)).batch
    assert len({id(s) for s in batch.item_ids}) == 5
    assert all(isinstance(c, np.ndarray) and c.dtype != object for c in (batch.user, batch.item, batch.label))
