"""Model snapshots: named tensors as a safetensors payload inside `ModelSnapshot` Avro envelopes.

`encode` turns tensors and metadata into one or more Avro messages (chunks no larger than the
message limit, each carrying the sha256 of the whole payload); `Assembler` joins chunks back and
verifies them; `decode_payload` parses the payload with safetensors. Nothing here unpickles: the
snapshot topic is an input that anyone with write access could fill.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from typing import Any

import fastavro
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from stream_learner.codec import load_schema
from stream_learner.errors import SnapshotError

FORMAT_VERSION = 1
SNAPSHOT_SCHEMA = fastavro.parse_schema(load_schema("model_snapshot"))
#: Room left in each message for the envelope's other fields.
ENVELOPE_ROOM = 64 << 10


@dataclass(frozen=True)
class PartitionRange:
    topic: str
    partition: int
    first: int
    last: int


@dataclass(frozen=True)
class SnapshotMeta:
    """Everything in the envelope except the chunking and the payload."""

    model_name: str
    version: int
    kind: str  # "FULL" or "DELTA"
    spec: str  # model spec as JSON
    created_ms: int
    window_start_ms: int
    window_end_ms: int
    newest_event_ms: int
    offsets: tuple[PartitionRange, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    state: str = "{}"
    base_version: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return json.loads(self.state)

    def resume_offsets(self) -> dict[tuple[str, int], int]:
        """Where a restart resumes: the next offset after each range."""
        return {(r.topic, r.partition): r.last + 1 for r in self.offsets}


@dataclass(frozen=True)
class Snapshot:
    meta: SnapshotMeta
    payload: bytes

    def tensors(self) -> dict[str, torch.Tensor]:
        return decode_payload(self.payload)


def encode_payload(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()})


def decode_payload(payload: bytes) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors payload; anything else (a pickle, say) is refused."""
    try:
        return st_load(payload)
    except (SafetensorError, ValueError, OSError) as exc:
        raise SnapshotError("not_safetensors", f"payload is not a safetensors file: {exc}") from None


def encode(meta: SnapshotMeta, payload: bytes, max_message_bytes: int) -> list[bytes]:
    """Avro envelopes of the snapshot, one per chunk of at most ``max_message_bytes``."""
    chunk_size = max(max_message_bytes - ENVELOPE_ROOM, 1 << 10)
    digest = hashlib.sha256(payload).hexdigest()
    count = max(1, -(-len(payload) // chunk_size))
    base = _envelope(meta)
    out = []
    for index in range(count):
        record = {
            **base,
            "chunk_index": index,
            "chunk_count": count,
            "payload_sha256": digest,
            "payload_size": len(payload),
            "payload": payload[index * chunk_size : (index + 1) * chunk_size],
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, SNAPSHOT_SCHEMA, record)
        out.append(buf.getvalue())
    return out


def _envelope(meta: SnapshotMeta) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
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


def decode_chunk(value: bytes) -> Chunk:
    """Parse one envelope; refuse what is not a `ModelSnapshot` of a known format."""
    try:
        rec = fastavro.schemaless_reader(io.BytesIO(value), SNAPSHOT_SCHEMA, None)
    except Exception as exc:  # fastavro raises many types on bad bytes
        raise SnapshotError("decode", f"not a ModelSnapshot envelope: {type(exc).__name__}: {exc}") from None
    assert isinstance(rec, dict)
    if rec["format_version"] != FORMAT_VERSION:
        raise SnapshotError("format_version", f"unknown format version {rec['format_version']}")
    if not 0 <= rec["chunk_index"] < rec["chunk_count"]:
        raise SnapshotError("chunk", f"chunk {rec['chunk_index']} of {rec['chunk_count']}")
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
    )
    return Chunk(
        meta,
        rec["chunk_index"],
        rec["chunk_count"],
        rec["payload_sha256"],
        rec["payload_size"],
        rec["payload"],
    )


class Assembler:
    """Joins chunks into snapshots. Chunks of one snapshot arrive in order on one partition; a
    chunk out of sequence abandons the snapshot being assembled."""

    def __init__(self) -> None:
        self._parts: list[Chunk] = []

    def add(self, chunk: Chunk) -> Snapshot | None:
        """Add a chunk; return the snapshot it completes, if any. Raises `SnapshotError`."""
        if chunk.index == 0:
            if self._parts:
                self._parts = []
                self._parts.append(chunk)
                raise SnapshotError("missing_chunk", "a new snapshot began before the last one was complete")
            self._parts.append(chunk)
        else:
            head = self._parts[0] if self._parts else None
            if head is None or head.meta.version != chunk.meta.version or len(self._parts) != chunk.index:
                self._parts = []
                raise SnapshotError(
                    "missing_chunk",
                    f"chunk {chunk.index} of version {chunk.meta.version} "
                    "arrived without the chunks before it",
                )
            self._parts.append(chunk)
        if len(self._parts) < chunk.count:
            return None
        parts, self._parts = self._parts, []
        payload = b"".join(p.data for p in parts)
        if len(payload) != chunk.size:
            raise SnapshotError("truncated", f"payload has {len(payload)} bytes, envelope says {chunk.size}")
        if hashlib.sha256(payload).hexdigest() != chunk.sha256:
            raise SnapshotError("checksum", f"sha256 mismatch for version {chunk.meta.version}")
        return Snapshot(replace(parts[0].meta), payload)
