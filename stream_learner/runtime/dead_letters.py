"""A rejected input message as a dead letter that the dead-letter topic takes, whatever its size.

A dead letter is the message as it came (value, key, its own headers) plus headers that say why and
where from (``stream-learner.reason``, ``.error``, ``.source.topic``, ``.source.partition``,
``.source.offset``). When that does not fit in ``max_bytes`` (the dead-letter topic's
``max.message.bytes``), it is cut to fit instead of failing the job: the value keeps its first bytes,
the message's own headers and then its key are dropped if they alone are too large, and
``stream-learner.truncated`` says what was cut, ``stream-learner.original.size`` and
``stream-learner.original.sha256`` the length and hash of the whole value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

Headers = list[tuple[str, bytes | None]]

#: Bytes kept free for the Kafka record batch and record framing around key, value and headers.
RECORD_OVERHEAD = 1 << 10
#: Longest error detail carried in a header.
MAX_DETAIL = 1000


@dataclass(frozen=True)
class DeadLetter:
    value: bytes | None
    key: bytes | None
    headers: Headers
    truncated: bool = False


def _size(headers: Sequence[tuple[str, bytes | None]]) -> int:
    return sum(len(k.encode()) + len(v or b"") for k, v in headers)


def dead_letter(
    *,
    value: bytes | None,
    key: bytes | None,
    original: Sequence[tuple[str, bytes | None]] | None,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    detail: str,
    max_bytes: int,
) -> DeadLetter:
    """The dead letter of one message, cut to fit ``max_bytes`` when it must be."""
    own: Headers = list(original or ())
    why: Headers = [
        ("stream-learner.reason", reason.encode()),
        ("stream-learner.error", detail[:MAX_DETAIL].encode("utf-8", "replace")),
        ("stream-learner.source.topic", topic.encode()),
        ("stream-learner.source.partition", str(partition).encode()),
        ("stream-learner.source.offset", str(offset).encode()),
    ]
    body = value or b""
    if RECORD_OVERHEAD + len(body) + len(key or b"") + _size(own) + _size(why) <= max_bytes:
        return DeadLetter(value, key, [*own, *why])
    cut = ["value"]
    why += [
        ("stream-learner.original.size", str(len(body)).encode()),
        ("stream-learner.original.sha256", hashlib.sha256(body).hexdigest().encode()),
    ]
    room = max_bytes - RECORD_OVERHEAD - _size([*why, ("stream-learner.truncated", b"value,headers,key")])
    if _size(own) > room // 2:
        own, cut = [], [*cut, "headers"]
    if key is not None and len(key) > (room - _size(own)) // 2:
        key, cut = None, [*cut, "key"]
    keep = max(0, room - _size(own) - len(key or b""))
    headers = [*own, *why, ("stream-learner.truncated", ",".join(cut).encode())]
    return DeadLetter(body[:keep], key, headers, truncated=True)
