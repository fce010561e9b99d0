"""Dead letters that fit go as they came; those that do not are cut to fit, saying what was cut."""

from __future__ import annotations

import hashlib

from stream_learner.runtime.dead_letters import RECORD_OVERHEAD, DeadLetter, dead_letter

LIMIT = 64 << 10


def _letter(value: bytes, key: bytes | None = b"k", original: list | None = None) -> DeadLetter:
    return dead_letter(
        value=value,
        key=key,
        original=original if original is not None else [("trace", b"t1")],
        topic="events",
        partition=3,
        offset=42,
        reason="id_too_long",
        detail="item_id is longer than 1024 bytes",
        max_bytes=LIMIT,
    )


def _size(letter: DeadLetter) -> int:
    headers = sum(len(k) + len(v or b"") for k, v in letter.headers)
    return RECORD_OVERHEAD + len(letter.value or b"") + len(letter.key or b"") + headers


def test_a_message_that_fits_goes_whole_with_why_and_where():
    letter = _letter(b"x" * 1000)
    headers = dict(letter.headers)
    assert (letter.value, letter.key, letter.truncated) == (b"x" * 1000, b"k", False)
    assert headers["trace"] == b"t1"
    assert headers["stream-learner.reason"] == b"id_too_long"
    assert headers["stream-learner.source.partition"] == b"3"
    assert headers["stream-learner.source.offset"] == b"42"
    assert "stream-learner.truncated" not in headers


def test_a_message_too_large_is_cut_to_fit_with_its_size_and_hash():
    value = bytes(range(256)) * 1000
    letter = _letter(value)
    headers = dict(letter.headers)
    assert letter.truncated and _size(letter) <= LIMIT
    assert letter.value == value[: len(letter.value or b"")] and len(letter.value or b"") > LIMIT // 2
    assert headers["stream-learner.truncated"] == b"value"
    assert headers["stream-learner.original.size"] == str(len(value)).encode()
    assert headers["stream-learner.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["stream-learner.source.offset"] == b"42" and headers["trace"] == b"t1"


def test_huge_original_headers_and_key_are_dropped_before_the_letter_fails():
    letter = _letter(b"v" * 10, key=b"k" * LIMIT, original=[("big", b"h" * LIMIT)])
    headers = dict(letter.headers)
    assert letter.truncated and _size(letter) <= LIMIT
    assert letter.key is None and "big" not in headers
    assert headers["stream-learner.truncated"] == b"value,headers,key"
    assert letter.value == b"v" * 10
