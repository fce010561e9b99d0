"""A model's committed snapshots on the snapshot topic, read back: newest first, or as they come.

`SnapshotLog` reads one model's snapshots (``read_committed``) from the single-partition snapshot
topic. To find the newest model it pages *backwards* from the end of the log until it meets a full
snapshot that verifies, so a restart or a new subscriber reads that snapshot and the deltas after
it, not the topic's whole history. Bad data is reported as an `Entry` with the `SnapshotError` that
says why; it never stops the reading. A Kafka failure raises `BrokerError`.

Verified means: whole, checksum right, the version in bounds, the signature right when a verifier
is given (`stream_learner.snapshots.signing`), and versions increasing in log order. The learner
writes versions in increasing order, so a snapshot followed in the log by a lower or equal version
is not part of the history being read backwards (a forged "v1000" among v24 and v25): it is refused
("version"). `newest_version` counts only verified snapshots: a damaged or forged envelope cannot
move the version counter.
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
from stream_learner.snapshots.chain import continuing
from stream_learner.snapshots.format import Assembler, Chunk, Snapshot, decode_chunk

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
        self.newest_version: int | None = None  # highest version of a verified snapshot read so far
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
        """Snapshots (and refusals), newest first, read backwards a page at a time. A snapshot whose
        version is not below that of every verified snapshot after it is refused ("version")."""
        low, high = self.bounds()
        self.follow_from = high
        end: int | None = None
        cut, size = high, PAGE
        below: int | None = None  # the lowest verified version after the current position
        while cut > low:
            start = max(low, cut - size)
            entries, first = self._page(start, end, at_start=start == low)
            if first is None and start > low:
                size *= 2  # no snapshot begins in this page: read further back, the same end
                continue
            for entry in reversed(entries):
                snap = entry.snapshot
                if snap is not None and below is not None and snap.meta.version >= below:
                    entry = Entry(entry.offset, error=_out_of_order(snap.meta.version, entry.offset, below))
                elif snap is not None:
                    below = snap.meta.version
                    self.newest_version = max(self.newest_version or 0, below)
                yield entry
            if first is None or start == low:
                return
            end = cut = first

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
        """Snapshots as they are committed, from offset ``start`` on, until ``stop`` is set."""
        chunks = _Chunks(tails_expected=False, verify=self.verify)
        for msg in self._messages(start, None, stop):
            yield from chunks.add(msg.offset() or 0, msg.value())
