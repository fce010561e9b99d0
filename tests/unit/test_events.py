"""Event columns: the vectorised id hash agrees with xxh64 everywhere, and batches keep rows aligned."""

from __future__ import annotations

import numpy as np
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.ingest.events import EventBatch, hash_id, hash_slices


def _pack(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in strings], np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.frombuffer(b"".join(strings), np.uint8), starts, lengths


def _xxh64_signed(data: bytes) -> int:
    key = xxhash.xxh64_intdigest(data)
    return key - (1 << 64) if key >= 1 << 63 else key


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=150), max_size=40))
def test_hash_slices_is_xxh64_of_each_slice(strings: list[bytes]) -> None:
    data, starts, lengths = _pack(strings)
    assert hash_slices(data, starts, lengths).tolist() == [_xxh64_signed(s) for s in strings]


def test_hash_slices_covers_every_length_path() -> None:
    # 0..100 bytes crosses every branch: single bytes, the 4-byte lane, 8-byte lanes, 32-byte stripes.
    rng = np.random.default_rng(3)
    strings = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(101)]
    data, starts, lengths = _pack(strings)
    assert hash_slices(data, starts, lengths).tolist() == [_xxh64_signed(s) for s in strings]


def test_hash_slices_reads_slices_in_any_order_and_overlap() -> None:
    data = np.frombuffer(b"user-42 and item-7", np.uint8)
    starts, lengths = np.array([12, 0, 0, 5]), np.array([6, 7, 4, 13])
    expected = [hash_id(t) for t in ("item-7", "user-42", "user", "42 and item-7")]
    assert hash_slices(data, starts, lengths).tolist() == expected


@given(st.text(max_size=60))
def test_hash_id_is_the_hash_of_the_utf8_bytes(text: str) -> None:
    data, starts, lengths = _pack([text.encode()])
    assert hash_slices(data, starts, lengths)[0] == hash_id(text)


def _batch(n: int, partition: int = 0) -> EventBatch:
    return EventBatch(
        user=np.arange(n, dtype=np.int64),
        item=np.arange(n, dtype=np.int64) + 100,
        context=np.arange(2 * n, dtype=np.int64).reshape(n, 2),
        label=(np.arange(n) % 2).astype(np.float32),
        timestamp_ms=np.array([5, 3, 3, 1][:n], np.int64),
        partition=np.full(n, partition, np.int32),
        offset=np.arange(n, dtype=np.int64)[::-1].copy(),
        item_ids=np.array([f"i{k}" for k in range(n)], dtype=object),
    )


def test_sorted_by_time_orders_by_time_then_partition_then_offset_and_keeps_rows_together() -> None:
    batch = EventBatch.concat([_batch(4, partition=1), _batch(2, partition=0)])
    ordered = batch.sorted_by_time()
    keys = list(
        zip(ordered.timestamp_ms.tolist(), ordered.partition.tolist(), ordered.offset.tolist(), strict=True)
    )
    assert keys == sorted(keys)
    # Every column moved with its row.
    assert (ordered.item - ordered.user == 100).all()
    assert [f"i{u}" for u in ordered.user.tolist()] == ordered.item_ids.tolist()
    assert (ordered.context[:, 0] == 2 * ordered.user).all()


def test_empty_batch_has_the_context_width() -> None:
    empty = EventBatch.empty(2)
    assert len(empty) == 0 and empty.context.shape == (0, 2)
    assert len(EventBatch.concat([empty, _batch(2)]).take(np.array([1]))) == 1
