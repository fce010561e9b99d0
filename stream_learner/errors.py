"""Exceptions raised by stream-learner; every one of them is a `StreamLearnerError`.

    StreamLearnerError
    ├── ConfigError             a setting is missing or invalid; names the setting (CLI exit code 2)
    │   ├── WarmStartError      a warm-start source, or a restored snapshot, does not fit the model
    │   └── StartupError        at start, no broker answered or the input topic is missing (exit code 2)
    ├── SchemaError             an input schema cannot be used
    │   ├── UnknownSchema       the Schema Registry has no schema with that id (the message is dead-lettered)
    │   └── IncompatibleSchema  a writer schema cannot be read as a UserEvent (the message is dead-lettered)
    ├── RegistryUnavailable     the Schema Registry did not answer or refused us (the job stops)
    ├── BrokerError             Kafka could not be reached, or answered with an error (exit code 4)
    │   └── CommitStalled       a snapshot commit made no progress within delivery.commit_timeout_seconds
    ├── SnapshotError           a snapshot was refused (checksum, chunks, format, ...); has a reason
    └── OwnershipLost           another instance took over this model (fenced, or the lease was revoked)

A message that is not a valid event is not an exception: the codec returns it as a `Rejected` with a
reason and the original message, which is what its dead letter needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

#: Why a snapshot is refused: `SnapshotError.reason`, and the ``reason`` label of
#: stream_learner_subscriber_snapshots_refused_total (created at zero for each of these).
SnapshotRefusal = Literal[
    "decode",
    "format_version",
    "version",
    "signature",
    "topic",
    "missing_chunk",
    "checksum",
    "truncated",
    "not_safetensors",
    "spec",
    "gap",
    "bad_delta",
    "non_finite",  # a tensor holds NaN or infinite values
    "state",  # the learner's restore only: the snapshot's learner state does not restore
    "missing_tensor",  # the learner's restore only: a tensor its state needs is missing or misshapen
    "form",  # a serving snapshot where a training one is needed (the learner's restore), or mixed forms
]


class StreamLearnerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(StreamLearnerError):
    """A setting is invalid. `setting` is its dotted name, e.g. ``window.size_seconds``; ``others``
    are more invalid settings found at the same time, as (setting, problem): `problems` has them all."""

    def __init__(self, setting: str, problem: str, others: Sequence[tuple[str, str]] = ()) -> None:
        self.setting = setting
        self.problem = problem
        self.problems = [(setting, problem), *others]
        if others:
            lines = "".join(f"\n  {s}: {p}" for s, p in self.problems)
            super().__init__(f"{len(self.problems)} invalid settings:{lines}")
        else:
            super().__init__(f"invalid setting {setting}: {problem}")


class WarmStartError(ConfigError):
    """A warm-start source (``warm_start.*``) or a restored snapshot does not fit the configured model."""


class StartupError(ConfigError):
    """What the settings point at is not there at start: no broker answered at
    ``kafka.bootstrap_servers``, or the input topic does not exist."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(setting, problem)
        self.args = (f"{setting}: {problem}",)  # not "invalid setting": the setting may well be right


class SchemaError(StreamLearnerError):
    """An Avro schema the input is written with cannot be used."""


class UnknownSchema(SchemaError):
    """The registry has no Avro schema with this id."""


class IncompatibleSchema(SchemaError, ValueError):
    """The writer schema cannot be read as a `UserEvent` (by the columnar reader)."""


class RegistryUnavailable(StreamLearnerError):
    """The registry did not answer (network error, timeout, 5xx) or refused us (401/403)."""


class BrokerError(StreamLearnerError):
    """A Kafka client failed: the broker is unreachable, a topic is missing, or a request failed."""


class CommitStalled(BrokerError):
    """A snapshot commit made no progress for ``delivery.commit_timeout_seconds``: this instance cannot
    commit (the broker is away, or a transactional call hangs) and leaves, so that a restart or the
    standby resumes from the last commit."""


class SnapshotError(StreamLearnerError):
    """A snapshot cannot be used. `reason` is a short metric label."""

    def __init__(self, reason: SnapshotRefusal, detail: str) -> None:
        self.reason: SnapshotRefusal = reason
        self.detail = detail
        super().__init__(f"snapshot refused ({reason}): {detail}")


class OwnershipLost(StreamLearnerError):
    """This instance no longer owns the model: another one took over."""
