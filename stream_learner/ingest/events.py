"""Events as columns: the unit that flows from the codec through windowing to the learner.

An `EventBatch` holds one array per field, never a Python object per event. Ids are hashed once, in
the codec, to 64-bit keys: `hash_slices` hashes many byte strings of one buffer at once (vectorised
xxh64), `hash_id` one string; both give the same key. The model maps keys to table rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import xxhash

#: Event types and the label each implies when the event carries no explicit label.
EVENT_LABELS: dict[str, float] = {
    "impression": 0.0,
    "view": 0.0,
    "click": 1.0,
    "add_to_cart": 1.0,
    "purchase": 1.0,
}

#: Why an input message is not an event (the ``reason`` label of events_invalid_total and the
#: ``stream-learner.reason`` header of its dead letter); see `stream_learner.ingest.codec`.
RejectReason = Literal[
    "decode",
    "unknown_schema",
    "incompatible_schema",
    "empty_id",
    "id_too_long",
    "field_too_long",
    "too_old",
    "future",
    "unknown_event_type",
    "bad_label",
]

#: Key given to a missing context value.
MISSING_KEY = 0


def hash_id(value: str) -> int:
    """Stable signed 64-bit key of an id string (xxh64 of its UTF-8; the same in every language)."""
    key = xxhash.xxh64_intdigest(value.encode())
    return key - (1 << 64) if key >= 1 << 63 else key


_U64 = np.uint64
_P1, _P2, _P3, _P4, _P5 = (
    _U64(p)
    for p in (
        0x9E3779B185EBCA87,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0x85EBCA77C2B2AE63,
        0x27D4EB2F165667C5,
    )
)
_V1, _V4 = _U64((0x9E3779B185EBCA87 + 0xC2B2AE3D27D4EB4F) % (1 << 64)), _U64((1 << 64) - 0x9E3779B185EBCA87)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(acc + lane * _P2, 31) * _P1


def hash_slices(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Signed xxh64 keys (seed 0) of the byte strings ``data[start:start + length]``, all at once.

    Equal to `hash_id` of each string's text. ``data`` is a uint8 array; every slice must lie inside it.
    """
    data = np.ascontiguousarray(data, np.uint8)
    # Unaligned little-endian views starting at every byte: a lane read is one gather. No read goes
    # past the end of its slice, so no padding is needed.
    r64 = np.ndarray((max(len(data) - 7, 0),), dtype="<u8", buffer=data, strides=(1,))
    r32 = np.ndarray((max(len(data) - 3, 0),), dtype="<u4", buffer=data, strides=(1,))
    starts = starts.astype(np.int64)
    lengths = lengths.astype(np.int64)
    h = np.full(len(starts), _P5, np.uint64)
    stripes = lengths // 32
    if stripes.any():  # strings of 32 bytes or more: four accumulators over 32-byte stripes
        big = np.flatnonzero(stripes)
        acc = [np.full(len(big), v, np.uint64) for v in (_V1, _P2, _U64(0), _V4)]
        first, count = starts[big], stripes[big]
        for s in range(int(count.max())):
            sel = np.flatnonzero(count > s)
            at = first[sel] + 32 * s
            for k in range(4):
                acc[k][sel] = _round(acc[k][sel], r64[at + 8 * k])
        merged = _rotl(acc[0], 1) + _rotl(acc[1], 7) + _rotl(acc[2], 12) + _rotl(acc[3], 18)
        for a in acc:
            merged = (merged ^ _round(np.zeros_like(a), a)) * _P1 + _P4
        h[big] = merged
    h += lengths.astype(np.uint64)
    pos = starts + stripes * 32
    rest = lengths % 32
    for j in range(3):  # 8-byte lanes of the tail
        sel = np.flatnonzero(rest // 8 > j)
        lane = _round(np.zeros(len(sel), np.uint64), r64[pos[sel] + 8 * j])
        h[sel] = _rotl(h[sel] ^ lane, 27) * _P1 + _P4
    pos += rest // 8 * 8
    rest %= 8
    sel = np.flatnonzero(rest >= 4)
    h[sel] = _rotl(h[sel] ^ (r32[pos[sel]].astype(np.uint64) * _P1), 23) * _P2 + _P3
    pos[sel] += 4
    rest[sel] -= 4
    for j in range(3):  # single bytes
        sel = np.flatnonzero(rest > j)
        h[sel] = _rotl(h[sel] ^ (data[pos[sel] + j].astype(np.uint64) * _P5), 11) * _P1
    h ^= h >> _U64(33)
    h *= _P2
    h ^= h >> _U64(29)
    h *= _P3
    h ^= h >> _U64(32)
    return h.view(np.int64)


@dataclass(frozen=True)
class EventBatch:
    """Decoded, valid events in columns. All arrays have the same length."""

    user: np.ndarray  # int64 keys
    item: np.ndarray  # int64 keys
    context: np.ndarray  # int64 keys, shape (n, number of context fields)
    label: np.ndarray  # float32 in [0, 1]
    timestamp_ms: np.ndarray  # int64 event time
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64
    item_ids: np.ndarray  # object: the original item ids (for serving's recently active items)

    def __len__(self) -> int:
        return len(self.label)

    @staticmethod
    def empty(context_fields: int = 0) -> EventBatch:
        return EventBatch(
            user=np.empty(0, np.int64),
            item=np.empty(0, np.int64),
            context=np.empty((0, context_fields), np.int64),
            label=np.empty(0, np.float32),
            timestamp_ms=np.empty(0, np.int64),
            partition=np.empty(0, np.int32),
            offset=np.empty(0, np.int64),
            item_ids=np.empty(0, dtype=object),
        )

    def take(self, index: np.ndarray | slice) -> EventBatch:
        """The events at `index` (an integer or boolean array, in that order; or a slice: views)."""
        return EventBatch(
            user=self.user[index],
            item=self.item[index],
            context=self.context[index],
            label=self.label[index],
            timestamp_ms=self.timestamp_ms[index],
            partition=self.partition[index],
            offset=self.offset[index],
            item_ids=self.item_ids[index],
        )

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        if len(batches) == 1:
            return batches[0]
        return EventBatch(
            user=np.concatenate([b.user for b in batches]),
            item=np.concatenate([b.item for b in batches]),
            context=np.concatenate([b.context for b in batches]),
            label=np.concatenate([b.label for b in batches]),
            timestamp_ms=np.concatenate([b.timestamp_ms for b in batches]),
            partition=np.concatenate([b.partition for b in batches]),
            offset=np.concatenate([b.offset for b in batches]),
            item_ids=np.concatenate([b.item_ids for b in batches]),
        )

    def sorted_by_time(self) -> EventBatch:
        """Deterministic order: event time, then partition, then offset."""
        order = np.lexsort((self.offset, self.partition, self.timestamp_ms))
        return self.take(order)
