"""Fuzz: over 10,000 generated malformed payloads at the decoder, plain Avro and Confluent framing.

Kinds: truncated encodings, random bytes, flipped bytes, records written with wrong field types, huge
strings (ids over the limit, absurd length prefixes), and, in the Confluent format, unknown schema
ids, wrong magic bytes and short frames. The decoder must not raise, must reject every malformed
payload with a reason, and must agree with a reference (fastavro, one record at a time, plus the
validation rules written out plainly) on every payload, accidentally valid ones included.
(The running job gets the same treatment in tests/integration/test_dead_letters.py.)
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from stream_learner.avro_schemas import load_schema
from stream_learner.ingest.codec import Decoder, confluent_frame, encode_event
from stream_learner.ingest.registry import SchemaRegistry
from tests.ingest_fuzz import MAX_ID, NOW, REASONS, malformed, reference, valid_record
from tests.ingest_support import messages, registry_stub


def _verdicts(decoder: Decoder, payloads: list[bytes]) -> list[tuple[str | None, str]]:
    """(reason or None, detail) per payload, decoded in batches of 1000."""
    out: list[tuple[str | None, str]] = []
    for start in range(0, len(payloads), 1000):
        chunk = payloads[start : start + 1000]
        result = decoder.decode(messages(chunk, first_offset=start))
        verdict: dict[int, tuple[str | None, str]] = {m.offset(): (None, "") for m in result.messages}
        verdict.update({r.message.offset(): (r.reason, r.detail) for r in result.rejected})
        assert len(verdict) == len(chunk) == len(result.batch) + len(result.rejected)
        out += [verdict[start + i] for i in range(len(chunk))]
    return out


def test_malformed_avro_payloads_are_all_rejected_with_the_reference_reasons() -> None:
    payloads = malformed(np.random.default_rng(2024), 9_000)
    expected = [reference(p) for p in payloads]
    assert sum(e is not None for e in expected) >= 8_500, "the generator should make malformed payloads"
    got = _verdicts(Decoder(clock=lambda: NOW, max_id_bytes=MAX_ID), payloads)
    mismatches = [
        (i, e, g)
        for i, (e, g) in enumerate(zip(expected, got, strict=True))
        # fastavro reads varints of more than 10 bytes; they are not Avro and we refuse them earlier.
        if e != g[0] and not (e is not None and g[0] == "decode" and "not a valid varint" in g[1])
    ]
    assert mismatches == []
    assert all(reason in REASONS and detail for reason, detail in got if reason is not None)
    seen = Counter(reason for reason, _ in got)
    assert {"decode", "id_too_long", "unknown_event_type"} <= set(seen), seen


def test_malformed_confluent_frames_are_all_rejected() -> None:
    rng = np.random.default_rng(7)
    body = [encode_event(valid_record(rng)) for _ in range(100)]
    payloads: list[bytes] = []
    for i in range(2_000):
        avro = body[i % 100]
        kind = i % 4
        if kind == 0:  # an id the registry does not know
            payloads.append(confluent_frame(int(rng.integers(2, 1 << 31)), avro))
        elif kind == 1:  # not the magic byte
            payloads.append(bytes([int(rng.integers(1, 256))]) + avro)
        elif kind == 2:  # shorter than the header
            payloads.append(b"\0" + rng.bytes(int(rng.integers(0, 4))))
        else:  # a known id, truncated body
            payloads.append(confluent_frame(1, avro[: int(rng.integers(0, len(avro)))]))
    with registry_stub({1: load_schema("user_event")}) as stub:
        decoder = Decoder(
            clock=lambda: NOW,
            wire_format="confluent",
            registry=SchemaRegistry(stub.url, sleep=lambda s: None),
        )
        got = _verdicts(decoder, payloads)
    reasons = Counter(reason for reason, _ in got)
    assert reasons == {"unknown_schema": 500, "decode": 1500}
    assert all(detail for _, detail in got)
