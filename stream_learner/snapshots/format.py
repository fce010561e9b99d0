"""Model snapshots: named tensors as a safetensors payload inside `ModelSnapshot` Avro envelopes.

Tensors are numpy arrays here (a reader needs no torch; the learner converts at its edges).
`encode_payload` lays them out as a safetensors file without copying their data; `encode` cuts
that payload into envelopes no larger than the message limit, each carrying the sha256 and size of
the whole payload (and, when a signer is given, a signature of `signed_message`). `Assembler` joins
chunks back and verifies them (checksum, and the signature through the check it is given);
`decode_payload` parses the payload with safetensors' numpy reader. Nothing here unpickles: the
snapshot topic is an input that anyone with write access could fill. The format is described in
docs/snapshot-format.md.

Two envelope layouts: ``format_version`` 1 has no ``signature`` field (what every unsigned snapshot is
written as, so that readers before signing read it), 2 has it. Both are read into the newest schema
by Avro schema resolution. ``format_version`` 3 is the layout of 2 for the *serving form* of a version
(`stream_learner.snapshots.serving_form`: another payload layout, which readers before it refuse).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import fastavro
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from stream_learner.avro_schemas import load_schema
from stream_learner.errors import SnapshotError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: The layout with the ``signature`` field, written when the snapshot is signed.
SIGNED_FORMAT_VERSION = 2
#: The serving form (signed or not), in the layout of `SIGNED_FORMAT_VERSION`.
SERVING_FORMAT_VERSION = 3
#: A full snapshot holds the whole state; a delta the rows changed since the version before it.
SnapshotKind = Literal["FULL", "DELTA"]
#: ``training``: the whole state, a learner restores from it; ``serving``: what scoring reads only.
SnapshotForm = Literal["training", "serving"]
SNAPSHOT_SCHEMA = fastavro.parse_schema(load_schema("model_snapshot"))
_UNSIGNED = load_schema("model_snapshot")
_UNSIGNED["fields"] = [f for f in _UNSIGNED["fields"] if f["name"] != "signature"]
#: The writer schema of each envelope layout.
WRITER_SCHEMAS = {
    FORMAT_VERSION: fastavro.parse_schema(_UNSIGNED),
    SIGNED_FORMAT_VERSION: SNAPSHOT_SCHEMA,
    SERVING_FORMAT_VERSION: SNAPSHOT_SCHEMA,
}
#: Highest version a snapshot may carry: far beyond any real history, and no overflow after it.
MAX_VERSION = 1 << 62
#: What a signature signs begins with this (so that it can mean nothing else).
SIGNATURE_CONTEXT = b"stream-learner snapshot signature v1\n"
#: Makes the signature of the signed message (`stream_learner.snapshots.signing.Signer`).
Sign = Callable[[bytes], bytes]
#: Bytes kept free in each message beyond the envelope itself (Kafka record and batch overhead, key).
MESSAGE_OVERHEAD = 4 << 10
#: Largest safetensors header accepted when describing a payload.
MAX_HEADER = 64 << 20

_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


@dataclass(frozen=True)
class PartitionRange:
    """Input offsets [first, last] a snapshot adds; first = last + 1 when it adds none."""

    topic: str
    partition: int
    first: int
    last: int


@dataclass(frozen=True)
class SnapshotMeta:
    """Everything in the envelope except the chunking and the payload."""

    model_name: str
    version: int
    kind: SnapshotKind
    spec: str  # model spec as JSON
    created_ms: int
    window_start_ms: int
    window_end_ms: int
    newest_event_ms: int
    offsets: tuple[PartitionRange, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    state: str = "{}"
    base_version: int | None = None
    form: SnapshotForm = "training"

    def state_dict(self) -> dict[str, Any]:
        return json.loads(self.state)

    def resume_offsets(self) -> dict[tuple[str, int], int]:
        """Where a restart resumes: the next offset after each range."""
        return {(r.topic, r.partition): r.last + 1 for r in self.offsets}


@dataclass(frozen=True)
class Snapshot:
    """A complete, verified snapshot: its metadata and the joined safetensors payload."""

    meta: SnapshotMeta
    payload: bytes

    def tensors(self) -> dict[str, np.ndarray]:
        return decode_payload(self.payload)


@dataclass(frozen=True)
class Payload:
    """A safetensors file as a header and the raw bytes of each tensor (views, not copies)."""

    parts: tuple[memoryview, ...]
    size: int
    sha256: str
    _keep: tuple[np.ndarray, ...] = ()  # the arrays the views point into

    def slices(self, chunk_size: int) -> Iterator[bytes]:
        """The payload cut into pieces of ``chunk_size`` bytes (the last may be shorter)."""
        pending: list[memoryview] = []
        held = 0
        for part in self.parts:
            while len(part):
                take = part[: chunk_size - held]
                pending.append(take)
                held += len(take)
                part = part[len(take) :]
                if held == chunk_size:
                    yield b"".join(pending)
                    pending, held = [], 0
        if pending or self.size == 0:
            yield b"".join(pending)

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


def encode_payload(tensors: Mapping[str, np.ndarray]) -> Payload:
    """Lay ``tensors`` out as a safetensors file, hashing it on the way; no data is copied unless an
    array is not C-contiguous (or not little-endian)."""
    header: dict[str, Any] = {}
    views: list[memoryview] = []
    keep: list[np.ndarray] = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")
        dtype = _DTYPES.get(array.dtype.newbyteorder("="))
        if dtype is None:
            raise ValueError(f"tensor {name} has dtype {array.dtype}, which snapshots do not carry")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        raw = array.reshape(-1).view(np.uint8)
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
        views.append(raw.data)
        keep.append(array)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    parts = (memoryview(struct.pack("<Q", len(text)) + text), *views)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return Payload(parts, sum(len(p) for p in parts), digest.hexdigest(), tuple(keep))


def decode_payload(payload: bytes) -> dict[str, np.ndarray]:
    """Arrays of a safetensors payload, writable (a fold applies deltas to them in place); anything
    else (a pickle, say) is refused, and so is a dtype numpy has no type for (bfloat16)."""
    try:
        arrays = st_load(payload)
    except (SafetensorError, ValueError, OSError) as exc:
        raise SnapshotError("not_safetensors", f"payload is not a safetensors file: {exc}") from None
    except KeyError as exc:
        raise SnapshotError("not_safetensors", f"payload holds a tensor of dtype {exc}") from None
    return {name: a if a.flags.writeable else a.copy() for name, a in arrays.items()}


def describe_payload(payload: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of each tensor, read from the safetensors header alone."""
    try:
        (length,) = struct.unpack_from("<Q", payload)
        if length > min(MAX_HEADER, len(payload) - 8):
            raise ValueError(f"header length {length} does not fit the payload")
        header = json.loads(payload[8 : 8 + length])
        return {
            name: (info["dtype"], tuple(info["shape"]))
            for name, info in header.items()
            if name != "__metadata__"
        }
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError("not_safetensors", f"payload is not a safetensors file: {exc}") from None


def encode(
    meta: SnapshotMeta, payload: Payload, max_message_bytes: int, sign: Sign | None = None
) -> Iterator[bytes]:
    """Avro envelopes of the snapshot, one per chunk, each at most ``max_message_bytes`` long; signed
    (format 2) when ``sign`` is given, else in the format 1 layout; a serving form as format 3,
    signed or not."""
    base = _envelope(meta)
    base.update(payload_sha256=payload.sha256, payload_size=payload.size)
    schema = WRITER_SCHEMAS[base["format_version"]]
    if schema is SNAPSHOT_SCHEMA:
        base["signature"] = None
    if sign is not None:
        schema = SNAPSHOT_SCHEMA
        base.update(
            format_version=_format_version(meta, signed=True),
            signature=sign(signed_message(meta, payload.sha256, payload.size)),
        )
    room = (
        max_message_bytes
        - MESSAGE_OVERHEAD
        - _encoded_size(schema, {**base, "chunk_index": 0, "chunk_count": 0})
    )
    chunk_size = room - 32  # the varints of index, count and length grow by at most this much
    if chunk_size < 1 << 10:
        raise ValueError(
            f"snapshot.max_message_bytes={max_message_bytes} leaves no room for payload "
            "next to the envelope (its learner state, spec and offsets)"
        )
    count = max(1, -(-payload.size // chunk_size))
    for index, data in enumerate(payload.slices(chunk_size)):
        buf = io.BytesIO()
        record = {**base, "chunk_index": index, "chunk_count": count, "payload": data}
        fastavro.schemaless_writer(buf, schema, record)
        yield buf.getvalue()


def signed_message(meta: SnapshotMeta, sha256: str, size: int) -> bytes:
    """What a snapshot's signature signs: `SIGNATURE_CONTEXT`, then the Avro encoding (format 2
    layout) of its envelope with the metrics map in key order, ``chunk_index`` and ``chunk_count`` 0,
    an empty payload and a null signature. So it covers every field of the metadata (model name,
    version, kind, base version, offsets, spec, state, ...), the form (``format_version`` 2 or 3)
    and the payload's sha256 and size."""
    record = {
        **_envelope(meta),
        "format_version": _format_version(meta, signed=True),
        "metrics": dict(sorted(meta.metrics.items())),
        "payload_sha256": sha256,
        "payload_size": size,
        "chunk_index": 0,
        "chunk_count": 0,
        "payload": b"",
        "signature": None,
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SNAPSHOT_SCHEMA, record)
    return SIGNATURE_CONTEXT + buf.getvalue()


def _encoded_size(schema: Any, record: dict[str, Any]) -> int:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {**record, "payload": b""})
    return buf.tell()


def _format_version(meta: SnapshotMeta, signed: bool) -> int:
    if meta.form == "serving":
        return SERVING_FORMAT_VERSION
    return SIGNED_FORMAT_VERSION if signed else FORMAT_VERSION


def _envelope(meta: SnapshotMeta) -> dict[str, Any]:
    return {
        "format_version": _format_version(meta, signed=False),
        "model_name": meta.model_name,
        "version": meta.version,
        "kind": meta.kind,
        "base_version": meta.base_version,
        "created_ms": meta.created_ms,
        "window_start_ms": meta.window_start_ms,
        "window_end_ms": meta.window_end_ms,
        "newest_event_ms": meta.newest_event_ms,
        "offsets": [vars(r) for r in meta.offsets],
        "metrics": dict(meta.metrics),
        "spec": meta.spec,
        "state": meta.state,
    }


@dataclass(frozen=True)
class Chunk:
    meta: SnapshotMeta
    index: int
    count: int
    sha256: str
    size: int
    data: bytes
    signature: bytes | None = None


def read_envelope(value: bytes) -> dict[str, Any]:
    """The envelope record of one message, read into the newest schema whatever its layout (a format
    1 envelope has ``signature`` None); refuses what is not one of a known format."""
    buf = io.BytesIO(value)
    try:
        layout = fastavro.schemaless_reader(buf, "int", None)
        buf.seek(0)
        writer = WRITER_SCHEMAS.get(layout, SNAPSHOT_SCHEMA) if isinstance(layout, int) else SNAPSHOT_SCHEMA
        rec = fastavro.schemaless_reader(buf, writer, SNAPSHOT_SCHEMA)
    except Exception as exc:  # fastavro raises many types on bad bytes
        raise SnapshotError("decode", f"not a ModelSnapshot envelope: {type(exc).__name__}: {exc}") from None
    assert isinstance(rec, dict)
    if rec["format_version"] not in WRITER_SCHEMAS:
        known = ", ".join(map(str, WRITER_SCHEMAS))
        problem = f"unknown format version {rec['format_version']} (this reader knows {known})"
        raise SnapshotError("format_version", problem)
    if buf.tell() != len(value):
        raise SnapshotError("decode", f"{len(value) - buf.tell()} trailing bytes after the envelope")
    return rec


def decode_chunk(value: bytes | None) -> Chunk:
    """Parse one envelope; refuse what is not a `ModelSnapshot` of a known format, or whose version
    is out of bounds (versions count from 1 up to `MAX_VERSION`; a delta's base comes before it)."""
    if not value:
        raise SnapshotError("decode", "empty message")
    rec = read_envelope(value)
    if not 0 <= rec["chunk_index"] < rec["chunk_count"]:
        raise SnapshotError("missing_chunk", f"chunk {rec['chunk_index']} of {rec['chunk_count']}")
    if (rec["kind"] == "DELTA") != (rec["base_version"] is not None):
        raise SnapshotError("decode", f"a {rec['kind']} snapshot with base_version {rec['base_version']}")
    version, base = rec["version"], rec["base_version"]
    if not 1 <= version <= MAX_VERSION or (base is not None and not 1 <= base < version):
        raise SnapshotError("version", f"version {version} (base {base}) is out of bounds (1 to 2^62)")
    meta = SnapshotMeta(
        model_name=rec["model_name"],
        version=rec["version"],
        kind=rec["kind"],
        spec=rec["spec"],
        created_ms=rec["created_ms"],
        window_start_ms=rec["window_start_ms"],
        window_end_ms=rec["window_end_ms"],
        newest_event_ms=rec["newest_event_ms"],
        offsets=tuple(PartitionRange(**r) for r in rec["offsets"]),
        metrics=dict(rec["metrics"]),
        state=rec["state"],
        base_version=rec["base_version"],
        form="serving" if rec["format_version"] == SERVING_FORMAT_VERSION else "training",
    )
    return Chunk(
        meta,
        rec["chunk_index"],
        rec["chunk_count"],
        rec["payload_sha256"],
        rec["payload_size"],
        rec["payload"],
        rec["signature"],
    )


class Assembler:
    """Joins chunks into snapshots. Chunks of one snapshot arrive in order on one partition. A chunk
    out of sequence is refused (once per snapshot: the rest of it is dropped); a snapshot left
    incomplete when the next one begins is reported to ``on_abandoned`` (both as `SnapshotError`
    "missing_chunk"). A complete snapshot whose payload checks out is then given to ``verify``
    (its first chunk: the signature check), which raises `SnapshotError` to refuse it."""

    def __init__(
        self,
        on_abandoned: Callable[[SnapshotError], None] | None = None,
        verify: Callable[[Chunk], None] | None = None,
    ) -> None:
        self._verify = verify
        self._parts: list[Chunk] = []
        self._refused: tuple[int, str] | None = None  # (version, sha256) of a snapshot refused mid-way
        self._on_abandoned = on_abandoned or (lambda err: log.warning("%s", err))

    @property
    def pending(self) -> bool:
        """A snapshot has begun and is not complete yet."""
        return bool(self._parts)

    def add(self, chunk: Chunk) -> Snapshot | None:
        """Add a chunk; return the snapshot it completes, if any. Raises `SnapshotError`."""
        parts, self._parts = self._parts, []
        if chunk.index > 0 and (chunk.meta.version, chunk.sha256) == self._refused:
            return None  # the rest of a snapshot already refused
        self._refused = None
        if chunk.index == 0:
            if parts:
                left = parts[0]
                self._on_abandoned(
                    SnapshotError(
                        "missing_chunk",
                        f"version {left.meta.version} ended after {len(parts)} of its {left.count} chunks "
                        f"(version {chunk.meta.version} began)",
                    )
                )
            parts = [chunk]
        else:
            head = parts[0] if parts else None
            if (
                head is None
                or (head.meta.version, head.count, head.sha256)
                != (chunk.meta.version, chunk.count, chunk.sha256)
                or len(parts) != chunk.index
            ):
                self._refused = (chunk.meta.version, chunk.sha256)
                raise SnapshotError(
                    "missing_chunk",
                    f"chunk {chunk.index} of version {chunk.meta.version} "
                    "arrived without the chunks before it",
                )
            parts.append(chunk)
        if len(parts) < chunk.count:
            self._parts = parts
            return None
        payload = b"".join(p.data for p in parts)
        if len(payload) != chunk.size:
            raise SnapshotError(
                "truncated",
                f"version {chunk.meta.version}: payload has {len(payload)} bytes, envelope says {chunk.size}",
            )
        if hashlib.sha256(payload).hexdigest() != chunk.sha256:
            raise SnapshotError("checksum", f"sha256 mismatch for version {chunk.meta.version}")
        if self._verify is not None:
            self._verify(parts[0])
        return Snapshot(parts[0].meta, payload)
