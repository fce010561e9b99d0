"""A model's committed snapshots on the snapshot topic, read back: newest first, or as they come.

`SnapshotLog` reads one model's snapshots (``read_committed``) from the single-partition snapshot
topic. To find the newest model it pages *backwards* from the end of the log until it meets a full
snapshot that verifies, so a restart or a new subscriber reads that snapshot and the deltas after
it, not the topic's whole history. Bad data is reported as an `Entry` with the `SnapshotError` that
says why; it never stops the reading. A Kafka failure raises `BrokerError`.

Verified means: whole, checksum right, the version in bounds, the signature right when a verifier
is given (`stream_learner.snapshots.signing`), and the snapshot continuing the one before it. The
learner numbers its snapshots one by one, each with the model spec of the one before (a new spec is
a new model), so (`History`, `continues`):

- a snapshot followed in the log by a lower or equal version is not part of the history being read
  backwards (a forged "v1000" among v24 and v25): it is refused ("version");
- a snapshot more than one version past the verified snapshot before it (a forged v2^62 after v20,
  after which the learner could only publish versions every reader refuses), or with another model
  spec than that one, is refused ("version", "spec"). Read backwards, the newest snapshot is
  therefore judged only once the one before it is read.

Without a signature these checks catch what is inconsistent, not a forgery that is consistent: a run
of forged snapshots, each one past the one before, reads as history (docs/decisions/snapshot-signing.md).
`newest_version` counts only verified snapshots: a damaged or forged envelope cannot move the version
counter.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_learner.config import KafkaSettings
from stream_learner.errors import BrokerError, SnapshotError
from stream_learner.kafka.clients import client_config
from stream_learner.snapshots.chain import continuing, read_spec
from stream_learner.snapshots.format import Assembler, Chunk, Snapshot, SnapshotMeta, decode_chunk

log = logging.getLogger(__name__)

#: Messages in the first backward page; a page in which no snapshot begins is doubled.
PAGE = 16
FETCH_BYTES = 64 << 20
FETCH_WAIT_MS = 20


@dataclass(frozen=True)
class Entry:
    """A snapshot found in the log, complete and verified, or refused with the reason."""

    offset: int | None  # of its first message (None: not read from the log as such)
    snapshot: Snapshot | None = None
    error: SnapshotError | None = None


def _out_of_order(version: int, offset: int | None, below: int) -> SnapshotError:
    return SnapshotError(
        "version",
        f"v{version} at offset {offset} is followed in the log by v{below}: versions only grow, so it is "
        "not part of this model's history (forged, or another writer)",
    )


def continues(meta: SnapshotMeta, before: SnapshotMeta) -> SnapshotError | None:
    """Why ``meta`` does not continue ``before``, the verified snapshot before it with a lower
    version (None when it does): more than one version past it, or another model spec."""
    if meta.version > before.version + 1:
        return SnapshotError(
            "version",
            f"v{meta.version} is more than one version past v{before.version} before it: the learner "
            "numbers its snapshots one by one (forged, or another writer)",
        )
    if meta.spec != before.spec and _spec_or_text(meta) != _spec_or_text(before):
        return SnapshotError(
            "spec",
            f"v{meta.version} has another model spec than v{before.version} before it: a new model "
            "spec is a new model (model.name), so it is not this model's",
        )
    return None


def _spec_or_text(meta: SnapshotMeta) -> object:
    """The spec ``meta`` carries, or its text when it cannot be read (compared as text then)."""
    try:
        return read_spec(meta)
    except SnapshotError:
        return meta.spec


class History:
    """Judges a model's snapshots read newest first (`SnapshotLog.newest_first`): out of order (a
    lower or equal version comes after it) or not continuing the snapshot before it, a snapshot is
    turned into a refusal. `add` returns the entries judged so far, newest first; a snapshot waits
    there until the one before it is read, or `finish` says there is none."""

    def __init__(self) -> None:
        self.below: int | None = None  # the lowest version accepted after the position reached
        self._pending: tuple[Entry, SnapshotMeta] | None = None  # waits for the snapshot before it
        self._held: list[Entry] = []  # what was read after the pending one, to give out after it

    def add(self, entry: Entry) -> list[Entry]:
        if entry.snapshot is None:
            return self._hold(entry)
        meta = entry.snapshot.meta
        limit = self._pending[1].version if self._pending is not None else self.below
        if limit is not None and meta.version >= limit:
            return self._hold(Entry(entry.offset, error=_out_of_order(meta.version, entry.offset, limit)))
        out = self._judge(meta)
        self._pending = entry, meta
        return out

    def finish(self) -> list[Entry]:
        """At the start of the log: the snapshot waiting has none before it."""
        return self._judge(None)

    def _hold(self, entry: Entry) -> list[Entry]:
        if self._pending is None:
            return [entry]
        self._held.append(entry)
        return []

    def _judge(self, before: SnapshotMeta | None) -> list[Entry]:
        """Judge the snapshot waiting against ``before``; give it out with what was held after it."""
        pending, held = self._pending, self._held
        self._pending, self._held = None, []
        if pending is None:
            return held
        entry, meta = pending
        error = continues(meta, before) if before is not None else None
        if error is not None:
            return [Entry(entry.offset, error=error), *held]
        self.below = meta.version
        return [entry, *held]


def _log_refused(entry: Entry) -> None:
    log.warning("refused snapshot data at offset %s: %s", entry.offset, entry.error)


class _Chunks:
    """Turns one model's messages, in log order, into entries. With ``tails_expected`` (reading from
    the middle of the log) everything before the first chunk 0 is ignored."""

    def __init__(self, tails_expected: bool, verify: Callable[[Chunk], None] | None = None) -> None:
        self.first: int | None = None  # offset of the first chunk 0 seen
        self.head: int | None = None  # offset of the snapshot being assembled
        self._tails_expected = tails_expected
        self._out: list[Entry] = []
        self._assembler = Assembler(
            on_abandoned=lambda err: self._out.append(Entry(self.head, error=err)), verify=verify
        )

    @property
    def pending(self) -> bool:
        return self._assembler.pending

    def add(self, offset: int, value: bytes | None) -> list[Entry]:
        try:
            chunk = decode_chunk(value)
        except SnapshotError as err:
            return [] if self._tails_expected and self.first is None else [Entry(offset, error=err)]
        if chunk.index == 0 and self.first is None:
            self.first = offset
        if self._tails_expected and self.first is None:
            return []
        self._out = []
        begins = offset if chunk.index == 0 or self.head is None else self.head
        try:
            snapshot = self._assembler.add(chunk)
            if snapshot is not None:
                self._out.append(Entry(begins, snapshot))
        except SnapshotError as err:
            self._out.append(Entry(begins, error=err))
        if chunk.index == 0:
            self.head = offset
        return self._out


class SnapshotLog:
    """One model's committed snapshots on the (single-partition) snapshot topic."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        model_name: str,
        on_refused: Callable[[Entry], None] = _log_refused,
        timeout: float = 30.0,
        verify: Callable[[Chunk], None] | None = None,
    ) -> None:
        self.topic = topic
        self.key = model_name.encode()
        self.timeout = timeout
        self.on_refused = on_refused
        self.verify = verify  # the signature check (`stream_learner.snapshots.signing.Verifier`)
        self.newest_version: int | None = None  # highest version of a snapshot accepted so far
        self._last: SnapshotMeta | None = None  # the last verified snapshot in the log, once read
        self.follow_from: int | None = None  # where new snapshots will appear, once the end was read
        self._position = 0
        self._consumer = Consumer(
            {
                **client_config(kafka),
                "group.id": f"stream-learner-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": FETCH_BYTES,
                "fetch.wait.max.ms": FETCH_WAIT_MS,  # the end of the log shows this soon
                "max.partition.fetch.bytes": FETCH_BYTES,
            }
        )

    def __enter__(self) -> SnapshotLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def bounds(self) -> tuple[int, int]:
        """The log's first and next offset; (0, 0) when the topic does not exist."""
        try:
            topic = self._consumer.list_topics(self.topic, timeout=self.timeout).topics.get(self.topic)
        except KafkaException as exc:
            raise BrokerError(f"reading the metadata of {self.topic}: {exc}") from None
        if topic is None or topic.error is not None:
            if topic is not None and topic.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise BrokerError(f"reading {self.topic}: {topic.error.str()}")
            return 0, 0
        if len(topic.partitions) != 1:
            raise SnapshotError(
                "topic", f"{self.topic} has {len(topic.partitions)} partitions; it must have 1"
            )
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, 0), timeout=self.timeout
            )
        except KafkaException as exc:
            raise BrokerError(f"reading the offsets of {self.topic}: {exc}") from None
        return low, high

    def _messages(
        self, start: int, end: int | None, stop: threading.Event | None = None
    ) -> Iterator[Message]:
        """This model's messages at offsets [start, end); to the end of the log when ``end`` is None,
        or for ever (until ``stop``) when ``stop`` is given."""
        self._consumer.assign([TopicPartition(self.topic, 0, start)])
        self._position = start
        while stop is None or not stop.is_set():
            msg = self._consumer.poll(0.2 if stop is not None else self.timeout)
            if msg is None:
                if stop is not None:
                    continue
                raise BrokerError(f"no data from {self.topic} within {self.timeout}s")
            err, offset = msg.error(), msg.offset() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._position = max(self._position, offset)
                    if stop is None:
                        return
                    continue
                raise BrokerError(f"reading {self.topic}: {err.str()}")
            if offset < start:
                continue
            if end is not None and offset >= end:
                return
            self._position = offset + 1
            if msg.key() == self.key:
                yield msg

    def _page(self, start: int, end: int | None, at_start: bool) -> tuple[list[Entry], int | None]:
        """Snapshots that begin in [start, end), in log order, and the offset where the first begins."""
        chunks = _Chunks(tails_expected=not at_start, verify=self.verify)
        entries = [
            e for msg in self._messages(start, end) for e in chunks.add(msg.offset() or 0, msg.value())
        ]
        if end is None:
            self.follow_from = chunks.head if chunks.pending and chunks.head is not None else self._position
        return entries, chunks.first

    def newest_first(self) -> Iterator[Entry]:
        """Snapshots (and refusals), newest first, read backwards a page at a time and judged by
        `History`: out of order, or not continuing the snapshot before it, a snapshot is refused."""
        low, high = self.bounds()
        self.follow_from = high
        end: int | None = None
        cut, size = high, PAGE
        history = History()
        self._last = None
        while cut > low:
            start = max(low, cut - size)
            entries, first = self._page(start, end, at_start=start == low)
            if first is None and start > low:
                size *= 2  # no snapshot begins in this page: read further back, the same end
                continue
            for entry in reversed(entries):
                if entry.snapshot is not None and self._last is None:
                    self._last = entry.snapshot.meta
                yield from self._judged(history.add(entry))
            if first is None or start == low:
                break
            end = cut = first
        yield from self._judged(history.finish())

    def _judged(self, entries: list[Entry]) -> list[Entry]:
        """Note the version of the newest snapshot accepted."""
        for entry in entries:
            if entry.snapshot is not None:
                self.newest_version = max(self.newest_version or 0, entry.snapshot.meta.version)
        return entries

    def chains(self) -> Iterator[list[Snapshot]]:
        """Candidate models, newest first: a verified full snapshot and the deltas that continue it."""
        newer: list[Snapshot] = []  # verified snapshots after the current position, in log order
        for entry in self.newest_first():
            if entry.snapshot is None:
                self.on_refused(entry)
                continue
            snap = entry.snapshot
            if snap.meta.kind == "FULL":
                yield continuing(snap, newer)
            newer.insert(0, snap)

    def follow(self, start: int, stop: threading.Event) -> Iterator[Entry]:
        """Snapshots as they are committed, from offset ``start`` on, until ``stop`` is set. A
        snapshot above the verified one before it (the last in the log when `newest_first` read it,
        then each followed) that does not continue it is refused, as `newest_first` would refuse it;
        one not above it is left to the caller (a re-read, or out of order)."""
        chunks = _Chunks(tails_expected=False, verify=self.verify)
        before = self._last
        for msg in self._messages(start, None, stop):
            for entry in chunks.add(msg.offset() or 0, msg.value()):
                snap = entry.snapshot
                if snap is not None:
                    later = before is not None and snap.meta.version > before.version
                    error = continues(snap.meta, before) if before is not None and later else None
                    before = snap.meta
                    entry = Entry(entry.offset, error=error) if error is not None else entry
                yield entry
