"""Dead letters of a rank, held until the snapshot that commits them.

In a distributed job only rank 0 has a producer, and a dead letter must be committed in the same
transaction as the input offset it stands for. So every rank's intake writes its dead letters into a
`LetterBox` instead of the sink; the polling loop hands them to the training thread with each turn
(together with the consume positions they belong to), and they travel to rank 0 with the rank's
part of the next snapshot, as JSON (bytes in base64), to be produced in that snapshot's
transaction, ahead of its chunks.
"""

from __future__ import annotations

import base64
from typing import Any

from stream_learner.runtime.dead_letters import DeadLetter, Headers


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class LetterBox:
    """A `DeadLetterSink` that keeps what it is given until `take` (the intake's side)."""

    def __init__(self, max_dead_letter_bytes: int) -> None:
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self._held: list[DeadLetter] = []

    def dead_letter(self, value: bytes | None, key: bytes | None, headers: Headers) -> None:
        self._held.append(DeadLetter(value, key, list(headers)))

    def take(self) -> list[DeadLetter]:
        """Everything given since the last call."""
        held, self._held = self._held, []
        return held


def to_json(letters: list[DeadLetter]) -> list[dict[str, Any]]:
    return [
        {"value": _b64(d.value), "key": _b64(d.key), "headers": [[k, _b64(v)] for k, v in d.headers]}
        for d in letters
    ]


def from_json(items: list[dict[str, Any]]) -> list[DeadLetter]:
    return [
        DeadLetter(_bytes(i["value"]), _bytes(i["key"]), [(str(k), _bytes(v)) for k, v in i["headers"]])
        for i in items
    ]
