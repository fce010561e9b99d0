"""Exceptions raised by stream-learner.

    StreamLearnerError
    ├── ConfigError        a setting is missing or invalid; the message names it
    ├── DecodeError        one input message could not be decoded or failed validation
    ├── SnapshotError      a snapshot was refused (checksum, chunks, format, not safetensors)
    ├── WarmStartError     a warm-start source does not fit the configured model
    └── OwnershipLost      another instance took over this model (fenced or lease revoked)

A `DecodeError` carries the Kafka message it failed on, which is what a dead letter needs.
"""

from __future__ import annotations

from typing import Any


class StreamLearnerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(StreamLearnerError):
    """A setting is invalid. `setting` is its dotted name, e.g. ``window.size_seconds``."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"invalid setting {setting}: {problem}")


class DecodeError(StreamLearnerError):
    """An input message is not a valid event. `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str, message: Any = None) -> None:
        self.reason = reason
        self.detail = detail
        self.message = message
        super().__init__(f"{reason}: {detail}")


class SnapshotError(StreamLearnerError):
    """A snapshot cannot be used. `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"snapshot refused ({reason}): {detail}")


class WarmStartError(StreamLearnerError):
    """A warm-start source does not match the model (names or shapes)."""


class OwnershipLost(StreamLearnerError):
    """This instance no longer owns the model: another one took over."""
