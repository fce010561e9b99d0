"""The output side of Kafka: snapshots, dead letters, and the commit of input offsets.

Exactly-once (default): one transactional producer whose id is derived from the model name, so a
newer instance fences an older one. A transaction is opened by the first dead letter or snapshot
after a commit and closed by the next snapshot, together with the input offsets that snapshot
includes (`send_offsets_to_transaction`): in the committed history the model, its dead letters and
its offsets move as one. At-least-once (for brokers without transactions): an idempotent producer;
the snapshot is flushed and acknowledged first, then the offsets are committed, so a crash between
the two replays events that the model already holds.

All producer work runs on the sink's own thread, in the order it was asked for, so the polling loop
never waits for snapshot encoding, the broker or a commit; a dead letter queued before a snapshot is
in that snapshot's transaction, as the offsets it is committed with require. At most
`MAX_QUEUED_SNAPSHOTS` snapshots wait at a time (their state copies are held in memory). A failure
there (a produce or commit error, a fence) is raised on the caller's thread at its next call, and
ends the job: the restart recovers from the last committed snapshot.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 60.0
MAX_QUEUED_SNAPSHOTS = 2
#: Bound on the producer's local queue (librdkafka copies each message until it is acknowledged).
MIN_QUEUE_KBYTES = 256 << 10


def transactional_id(settings: Settings) -> str:
    return f"stream-learner.{settings.input.group_id}.{settings.model.name}"


class Sink:
    """Producer of snapshot chunks and dead letters, and the committer of input offsets."""

    def __init__(self, settings: Settings, commit_offsets: Callable[[dict[int, int]], None]) -> None:
        self.exactly_once = settings.delivery.mode == "exactly_once"
        self.snapshot_topic = settings.snapshot.topic
        self.dead_letter_topic = settings.dead_letter.topic
        self.input_topic = settings.input.topic
        self._commit_offsets = commit_offsets
        conf: dict[str, object] = {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "message.max.bytes": settings.snapshot.max_message_bytes + (1 << 20),
            "queue.buffering.max.kbytes": max(
                MIN_QUEUE_KBYTES, 4 * settings.snapshot.max_message_bytes >> 10
            ),
            "linger.ms": 5,
        }
        if self.exactly_once:
            conf["transactional.id"] = transactional_id(settings)
            conf["transaction.timeout.ms"] = settings.delivery.transaction_timeout_ms
        self._producer = Producer(conf)
        self._in_transaction = False
        self._errors: list[KafkaError] = []
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._room = threading.Semaphore(MAX_QUEUED_SNAPSHOTS)
        self._failure: BaseException | None = None
        self._reported = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register the transactional id (fencing any older instance of this model and aborting its
        open transaction), then start the sink's thread."""
        if self.exactly_once:
            try:
                self._producer.init_transactions(FLUSH_TIMEOUT)
            except KafkaException as exc:
                raise _ownership_or(exc) from exc
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------
    def dead_letter(self, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Queue one rejected input message, as it was, with headers saying why."""
        self._submit(lambda: self._dead_letter(value, key, headers))

    def publish(
        self,
        chunks: Callable[[], Iterable[bytes]],
        key: bytes,
        offsets: dict[int, int],
        group_metadata: object,
        committed: Callable[[], None],
    ) -> None:
        """Queue a snapshot: the messages ``chunks()`` yields (called on the sink's thread), committed
        with ``offsets`` (next offset per input partition); ``committed`` is called after the commit.
        Waits while `MAX_QUEUED_SNAPSHOTS` snapshots are queued."""
        while not self._room.acquire(timeout=0.2):
            self.poll()
        self._submit(lambda: self._publish(chunks, key, offsets, group_metadata, committed))

    def poll(self) -> None:
        """Raise the sink thread's failure, if there was one."""
        if self._failure is not None and not self._reported:
            self._reported = True
            raise self._failure

    def close(self) -> None:
        """Finish the queued work, abort what was not committed (it is produced again on replay),
        flush, and raise a failure not reported yet."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(4 * FLUSH_TIMEOUT)
            if self._thread.is_alive():
                log.error("the sink did not finish its queued work in time; it is abandoned")
                return
        if self._in_transaction:
            try:
                self._producer.abort_transaction(FLUSH_TIMEOUT)
            except KafkaException as exc:
                log.warning("could not abort the open transaction: %s", exc)
            self._in_transaction = False
        if self._failure is None:  # after a fatal error (fenced) the producer delivers nothing more
            self._producer.flush(FLUSH_TIMEOUT)
        self.poll()

    def _submit(self, job: Callable[[], None]) -> None:
        self.poll()
        self._jobs.put(job)

    # -- the sink's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._jobs.get(timeout=0.1)
            except queue.Empty:
                if self._failure is None:
                    self._guarded(lambda: self._producer.poll(0))  # serve delivery callbacks
                continue
            if item is None:
                return
            if self._failure is None:
                self._guarded(item)

    def _guarded(self, job: Callable[[], object]) -> None:
        """Run ``job``; keep its failure for the polling loop (a fenced producer fails even in poll)."""
        try:
            job()
        except BaseException as exc:
            log.error("sink failed: %s", exc)
            self._failure = exc

    def _begin(self) -> None:
        if self.exactly_once and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(err)

    def _dead_letter(self, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self._begin()
        self._produce(self.dead_letter_topic, value, key, headers)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers or ()), on_delivery=self._delivered
                )
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def _publish(
        self,
        chunks: Callable[[], Iterable[bytes]],
        key: bytes,
        offsets: dict[int, int],
        group_metadata: object,
        committed: Callable[[], None],
    ) -> None:
        try:
            self._begin()
            for chunk in chunks():
                self._produce(self.snapshot_topic, chunk, key)
            if self.exactly_once:
                tps = [TopicPartition(self.input_topic, p, o) for p, o in offsets.items()]
                try:
                    self._producer.send_offsets_to_transaction(tps, group_metadata, FLUSH_TIMEOUT)
                    self._producer.commit_transaction(FLUSH_TIMEOUT)
                except KafkaException as exc:
                    raise _ownership_or(exc) from exc
                self._in_transaction = False
                self._errors.clear()
            else:
                remaining = self._producer.flush(FLUSH_TIMEOUT)
                if remaining or self._errors:
                    errors, self._errors = self._errors, []
                    raise KafkaException(errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT))
                self._commit_offsets(offsets)
            committed()
        finally:
            self._room.release()


def _ownership_or(exc: KafkaException) -> Exception:
    """A fenced producer means another instance took over this model."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ):
        return OwnershipLost(f"fenced by a newer instance: {err.str()}")
    return exc
