"""The snapshot format: safetensors payloads, chunked Avro envelopes, and what the reader refuses."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import replace

import fastavro
import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.torch import save as torch_save

from stream_learner.errors import SnapshotError
from stream_learner.snapshots.format import (
    SIGNED_FORMAT_VERSION,
    SNAPSHOT_SCHEMA,
    WRITER_SCHEMAS,
    Assembler,
    PartitionRange,
    Snapshot,
    SnapshotMeta,
    decode_chunk,
    decode_payload,
    describe_payload,
    encode,
    encode_payload,
)

META = SnapshotMeta(
    model_name="m",
    version=7,
    kind="DELTA",
    base_version=6,
    spec='{"kind": "dnn"}',
    created_ms=1_700_000_000_123,
    window_start_ms=1_700_000_000_000,
    window_end_ms=1_700_000_060_000,
    newest_event_ms=1_700_000_059_999,
    offsets=(PartitionRange("in", 0, 10, 19), PartitionRange("in", 1, 5, 4)),
    metrics={"validation_loss": 0.5, "validation_auc": 0.75},
    state='{"learner": {"events_trained": 42}}',
)


def _tensors(n: int = 1000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "model.embeddings.user.weight": rng.standard_normal((n, 4), np.float32),
        "model.bias": rng.standard_normal(1, np.float32),
        "optim.sparse.embeddings.user.weight.step": np.array(3.0, np.float32),
        "half": rng.standard_normal((5, 3)).astype(np.float16),
        "sums": rng.standard_normal((4, 6)),
        "ids": np.arange(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "small": np.arange(3, dtype=np.int8),
        "empty": np.empty((0, 4), np.float32),
    }


def _assemble(messages: list[bytes]) -> Snapshot:
    assembler = Assembler()
    out = [assembler.add(decode_chunk(m)) for m in messages]
    assert all(s is None for s in out[:-1])
    assert out[-1] is not None
    return out[-1]


def test_payload_is_a_safetensors_file_with_every_tensor_bit_exact():
    tensors = _tensors()
    payload = encode_payload(tensors)
    data = payload.tobytes()
    assert len(data) == payload.size
    assert hashlib.sha256(data).hexdigest() == payload.sha256
    for loaded in (st_load(data), decode_payload(data)):  # the library's own reader agrees
        assert loaded.keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
            assert loaded[name].tobytes() == tensor.tobytes(), name
    assert describe_payload(data)["half"] == ("F16", (5, 3))
    assert describe_payload(data)["optim.sparse.embeddings.user.weight.step"] == ("F32", ())
    assert all(a.flags.writeable for a in decode_payload(data).values())  # a fold applies deltas in place


def test_a_payload_torch_wrote_decodes_to_the_same_arrays():
    """What safetensors writes from torch tensors (as older learners did) reads back value for value."""
    tensors = {k: v for k, v in _tensors().items() if k != "half"}
    as_torch = {k: torch.from_numpy(v) for k, v in tensors.items()}
    loaded = decode_payload(torch_save(as_torch))
    assert {k: (v.dtype, v.tobytes()) for k, v in loaded.items()} == {
        k: (v.dtype, v.tobytes()) for k, v in tensors.items()
    }


def test_a_payload_of_a_dtype_numpy_lacks_is_refused():
    data = torch_save({"w": torch.zeros(3, dtype=torch.bfloat16)})
    with pytest.raises(SnapshotError) as err:
        decode_payload(data)
    assert err.value.reason == "not_safetensors" and "BF16" in str(err.value)


@pytest.mark.parametrize("array", [np.arange(12.0).reshape(3, 4).T, np.arange(6, dtype=">i4")])
def test_payload_of_a_non_contiguous_or_big_endian_array_holds_its_values(array):
    decoded = decode_payload(encode_payload({"t": array}).tobytes())["t"]
    assert np.array_equal(decoded, array) and decoded.dtype == array.dtype.newbyteorder("<")


@pytest.mark.parametrize("rows", [0, 1, 3000, 6000])
@pytest.mark.parametrize("max_bytes", [16 << 10, 64 << 10])
def test_chunks_fit_the_limit_and_reassemble_to_the_same_payload(rows, max_bytes):
    rng = np.random.default_rng(rows)
    tensors = {"w": rng.standard_normal((rows, 8), np.float32), "b": rng.standard_normal(3, np.float32)}
    payload = encode_payload(tensors)
    messages = list(encode(META, payload, max_bytes))
    assert all(len(m) <= max_bytes for m in messages)
    chunks = [decode_chunk(m) for m in messages]
    assert len(messages) == max(1, -(-payload.size // len(chunks[0].data)))  # no more chunks than needed
    assert [c.index for c in chunks] == list(range(len(messages)))
    assert {c.count for c in chunks} == {len(messages)}
    snap = _assemble(messages)
    assert snap.payload == payload.tobytes()
    assert snap.meta == META
    assert np.array_equal(snap.tensors()["w"], tensors["w"])


def _zeros_payload(size: int):
    """A payload of exactly ``size`` bytes."""
    k = size - encode_payload({"x": np.zeros(size, np.uint8)}).size + size
    payload = encode_payload({"x": np.zeros(k, np.uint8)})
    assert payload.size == size
    return payload


def test_the_chunk_size_boundary_is_exact():
    """Payloads one byte below, at and one above the chunk size need 1, 1 and 2 chunks."""
    max_bytes = 32 << 10
    chunk = len(decode_chunk(next(encode(META, _zeros_payload(max_bytes), max_bytes))).data)
    for size, count in ((chunk - 1, 1), (chunk, 1), (chunk + 1, 2)):
        payload = _zeros_payload(size)
        messages = list(encode(META, payload, max_bytes))
        assert len(messages) == count, size
        assert _assemble(messages).payload == payload.tobytes()


def test_a_limit_too_small_for_the_envelope_is_refused_with_the_setting_named():
    big_state = replace(META, state='{"x": "' + "y" * 40_000 + '"}')
    with pytest.raises(ValueError, match="max_message_bytes"):
        list(encode(big_state, encode_payload({"w": np.zeros(4, np.float32)}), 40 << 10))


def _messages(rows: int = 5000, max_bytes: int = 16 << 10, meta: SnapshotMeta = META) -> list[bytes]:
    w = np.random.default_rng(rows).standard_normal((rows, 4), np.float32)
    return list(encode(meta, encode_payload({"w": w}), max_bytes))


def test_wrong_checksum_is_refused():
    chunks = [decode_chunk(m) for m in _messages()]
    assert len(chunks) >= 3
    bad = bytearray(chunks[1].data)
    bad[10] ^= 0xFF
    chunks[1] = replace(chunks[1], data=bytes(bad))
    assembler = Assembler()
    with pytest.raises(SnapshotError) as err:
        for c in chunks:
            assembler.add(c)
    assert err.value.reason == "checksum"


def test_missing_chunk_is_refused_and_the_next_snapshot_still_assembles():
    first = _messages()
    second = _messages(meta=replace(META, version=8))
    assert len(first) >= 4
    assembler = Assembler()
    errors = []
    for m in first[:1] + first[2:]:
        try:
            assert assembler.add(decode_chunk(m)) is None
        except SnapshotError as err:
            errors.append(err.reason)
    assert errors == ["missing_chunk"]  # once per snapshot, not once per chunk after the gap
    done = [assembler.add(decode_chunk(m)) for m in second]
    assert done[-1] is not None and done[-1].meta.version == 8


def test_a_snapshot_left_incomplete_is_reported_when_the_next_begins():
    first = _messages()
    single = _messages(rows=10, max_bytes=1 << 20, meta=replace(META, version=8))
    assert len(single) == 1
    abandoned: list[SnapshotError] = []
    assembler = Assembler(on_abandoned=abandoned.append)
    assert assembler.add(decode_chunk(first[0])) is None
    done = assembler.add(decode_chunk(single[0]))  # completes at once, despite the abandoned one
    assert done is not None and done.meta.version == 8
    assert [e.reason for e in abandoned] == ["missing_chunk"]
    assert "version 7" in str(abandoned[0])


def test_truncated_chunk_is_refused():
    chunks = [decode_chunk(m) for m in _messages()]
    chunks[-1] = replace(chunks[-1], data=chunks[-1].data[:-5])
    assembler = Assembler()
    with pytest.raises(SnapshotError) as err:
        for c in chunks:
            assembler.add(c)
    assert err.value.reason == "truncated"


def _raw_envelope(**overrides: object) -> bytes:
    record = {
        "format_version": SIGNED_FORMAT_VERSION,  # the layout SNAPSHOT_SCHEMA writes
        "model_name": "m",
        "version": 1,
        "kind": "FULL",
        "base_version": None,
        "created_ms": 0,
        "window_start_ms": 0,
        "window_end_ms": 0,
        "newest_event_ms": 0,
        "offsets": [],
        "metrics": {},
        "spec": "{}",
        "state": "{}",
        "chunk_index": 0,
        "chunk_count": 1,
        "payload_sha256": hashlib.sha256(b"").hexdigest(),
        "payload_size": 0,
        "payload": b"",
        "signature": None,
        **overrides,
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SNAPSHOT_SCHEMA, record)  # the newest layout, signature and all
    return buf.getvalue()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_raw_envelope(format_version=max(WRITER_SCHEMAS) + 1), "format_version"),
        (_raw_envelope(chunk_index=3, chunk_count=2), "missing_chunk"),
        (_raw_envelope(kind="DELTA"), "decode"),  # a delta must name its base
        (_raw_envelope() + b"\x00", "decode"),
        (b"", "decode"),
        (b"\xff" * 50, "decode"),
        (pickle.dumps({"model.bias": [1.0]}), "decode"),
    ],
)
def test_envelopes_that_are_not_usable_are_refused_with_the_reason(value, reason):
    with pytest.raises(SnapshotError) as err:
        decode_chunk(value)
    assert err.value.reason == reason


class _Exploit:
    """Unpickling this would create a file; the reader must never unpickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    data = pickle.dumps({"model.bias": _Exploit(str(marker))})
    digest = hashlib.sha256(data).hexdigest()
    envelope = _raw_envelope(payload=data, payload_size=len(data), payload_sha256=digest)
    snap = Assembler().add(decode_chunk(envelope))  # the envelope itself is well formed
    assert snap is not None
    with pytest.raises(SnapshotError) as err:
        snap.tensors()
    assert err.value.reason == "not_safetensors"
    with pytest.raises(SnapshotError):
        describe_payload(data)
    assert not os.path.exists(marker)
