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

Every wait is bounded. The sink notes each step of progress (a message queued or acknowledged, a
transactional call done); queued work that made no progress for ``delivery.stall_seconds`` says the
instance cannot commit (`stalled_for`, read by /readyz), and for ``delivery.commit_timeout_seconds``
fails the job (`CommitStalled`), whether the broker is away or a call hangs inside librdkafka (its
``send_offsets_to_transaction`` can ignore its timeout once the group coordinator went away,
confluentinc/librdkafka#5456). Retriable errors of the transactional calls are retried until then;
an error that needs an abort aborts and fails the job. See docs/decisions/broker-outages.md.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_learner.config import Settings
from stream_learner.errors import BrokerError, CommitStalled, OwnershipLost
from stream_learner.kafka.clients import client_config

log = logging.getLogger(__name__)

MAX_QUEUED_SNAPSHOTS = 2
#: A snapshot message: keyed by the model published, or a (key, message) pair of another model, or a
#: (topic, key, message) triple for another topic (the serving form's).
Message = bytes | tuple[bytes, bytes] | tuple[str, bytes, bytes]
#: Bound on the producer's local queue (librdkafka copies each message until it is acknowledged).
MIN_QUEUE_KBYTES = 256 << 10


def transactional_id(settings: Settings) -> str:
    return f"stream-learner.{settings.input.group_id}.{settings.model.name}"


class Sink:
    """Producer of snapshot chunks and dead letters, and the committer of input offsets."""

    def __init__(
        self,
        settings: Settings,
        commit_offsets: Callable[[dict[int, int]], None],
        dead_letter_bytes: int | None = None,
        while_waiting: Callable[[], object] | None = None,
    ) -> None:
        """``dead_letter_bytes``: the largest message the dead-letter topic takes (its
        ``max.message.bytes``, `stream_learner.kafka.admin.max_message_bytes`); default: as large as
        a snapshot message. ``while_waiting`` is called while `publish` waits for room (to keep the
        lease, and to raise when it is lost)."""
        self.exactly_once = settings.delivery.mode == "exactly_once"
        self.snapshot_topic = settings.snapshot.topic
        self.dead_letter_topic = settings.dead_letter.topic
        self.input_topic = settings.input.topic
        self.timeout = settings.delivery.commit_timeout_seconds
        self._commit_offsets = commit_offsets
        self._while_waiting = while_waiting
        message_max = max(settings.snapshot.max_message_bytes + (1 << 20), dead_letter_bytes or 0)
        #: The largest dead letter the producer and the dead-letter topic take, framing included.
        self.max_dead_letter_bytes = dead_letter_bytes or message_max
        conf: dict[str, object] = {
            **client_config(settings.kafka),
            "enable.idempotence": True,
            "message.max.bytes": message_max,
            "queue.buffering.max.kbytes": max(MIN_QUEUE_KBYTES, 4 * message_max >> 10),
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
        self._abandoned = False
        self._reported = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unfinished = 0  # jobs queued or running
        self._progress = time.monotonic()  # the last step of progress, or when work arrived

    def start(self) -> None:
        """Register the transactional id (fencing any older instance of this model and aborting its
        open transaction), then start the sink's thread."""
        if self.exactly_once:
            try:
                self._producer.init_transactions(self.timeout)
            except KafkaException as exc:
                raise _failure(exc, "registering the transactional id") from exc
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------
    def dead_letter(
        self, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> None:
        """Queue one rejected input message, as it was, with headers saying why."""
        self._submit(lambda: self._dead_letter(value, key, headers))

    def publish(
        self,
        chunks: Callable[[], Iterable[Message]],
        key: bytes,
        offsets: dict[int, int],
        group_metadata: object,
        committed: Callable[[], None],
    ) -> None:
        """Queue a snapshot: the messages ``chunks()`` yields (called on the sink's thread; keyed by
        ``key``, or a (key, message) pair for another model's snapshot in the same transaction, such
        as a student's), committed with ``offsets`` (next offset per input partition); ``committed``
        is called after the commit. Waits while `MAX_QUEUED_SNAPSHOTS` snapshots are queued."""
        while not self._room.acquire(timeout=0.2):
            if self._failure is not None and self._reported:
                raise self._failure
            self.poll()
            if self._while_waiting is not None:
                self._while_waiting()
        self._submit(lambda: self._publish(chunks, key, offsets, group_metadata, committed))

    def poll(self) -> None:
        """Raise the sink thread's failure, if there was one, or `CommitStalled` once queued work made
        no progress for ``delivery.commit_timeout_seconds``."""
        stalled = self.stalled_for()
        if self._failure is None and stalled >= self.timeout:
            self._failure = CommitStalled(
                f"no progress committing to Kafka for {stalled:.0f} s "
                "(delivery.commit_timeout_seconds): the broker is unreachable or a transaction hangs"
            )
        if self._failure is not None and not self._reported:
            self._reported = True
            raise self._failure

    def stalled_for(self) -> float:
        """Seconds that queued work has made no progress (0 when there is none)."""
        with self._lock:
            return time.monotonic() - self._progress if self._unfinished else 0.0

    def close(self, timeout: float) -> None:
        """Finish the queued work within ``timeout`` seconds, abort what was not committed (it is
        produced again on replay), flush, and raise a failure not reported yet. Work that stalled or
        failed is abandoned at once: the next instance's `start` aborts its transaction."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(0.1)
            while (
                self._thread.is_alive()
                and time.monotonic() < deadline
                and self._failure is None
                and self.stalled_for() < self.timeout
            ):
                self._thread.join(0.2)
            if self._thread.is_alive():
                log.error("the sink's work did not finish; it is abandoned (nothing more is committed)")
                self.poll()
                return
        if self._in_transaction and self._failure is None:
            try:
                self._producer.abort_transaction(max(1.0, min(self.timeout, deadline - time.monotonic())))
            except KafkaException as exc:
                log.warning("could not abort the open transaction: %s", exc)
            self._in_transaction = False
        if self._failure is None:  # after a fatal error (fenced) the producer delivers nothing more
            self._producer.flush(max(0.0, deadline - time.monotonic()))
        self.poll()

    def abandon(self) -> None:
        """Leave at once, committing nothing more and raising nothing (the lease was lost: another
        instance may own the model, and its `start` aborts what this one left open). The sink's
        thread, possibly stuck in a transactional call, is not waited for."""
        self._abandoned = True
        self._jobs.put(None)
        with self._lock:
            unfinished = self._unfinished
        if unfinished:
            log.warning("leaving %d queued snapshot and dead-letter jobs uncommitted", unfinished)

    def _submit(self, job: Callable[[], None]) -> None:
        self.poll()
        with self._lock:
            if not self._unfinished:
                self._progress = time.monotonic()  # the clock starts when work arrives
            self._unfinished += 1
        self._jobs.put(job)

    def _progressed(self) -> None:
        self._progress = time.monotonic()

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
            if self._failure is None and not self._abandoned:
                self._guarded(item)
            with self._lock:
                self._unfinished -= 1
                self._progress = time.monotonic()

    def _guarded(self, job: Callable[[], object]) -> None:
        """Run ``job``; keep its failure for the polling loop (a fenced producer fails even in poll)."""
        try:
            job()
        except BaseException as exc:
            log.error("sink failed: %s", exc)
            if self._failure is None:  # not after `poll` declared it stalled
                self._failure = exc

    def _begin(self) -> None:
        if self.exactly_once and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(err)
        else:
            self._progressed()

    def _dead_letter(
        self, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> None:
        self._begin()
        self._produce(self.dead_letter_topic, value, key, headers)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers or ()), on_delivery=self._delivered
                )
                self._progressed()
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def _publish(
        self,
        chunks: Callable[[], Iterable[Message]],
        key: bytes,
        offsets: dict[int, int],
        group_metadata: object,
        committed: Callable[[], None],
    ) -> None:
        try:
            self._begin()
            for chunk in chunks():
                topic, own, value = _addressed(chunk, self.snapshot_topic, key)
                self._produce(topic, value, own)
            if self.exactly_once:
                tps = [TopicPartition(self.input_topic, p, o) for p, o in offsets.items()]
                self._transactional(
                    "sending the offsets",
                    lambda: self._producer.send_offsets_to_transaction(tps, group_metadata, self.timeout),
                )
                self._transactional("committing", lambda: self._producer.commit_transaction(self.timeout))
                self._in_transaction = False
                self._errors.clear()
            else:
                remaining = self._producer.flush(self.timeout)
                if remaining or self._errors:
                    errors, self._errors = self._errors, []
                    error = errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT)
                    raise BrokerError(f"publishing a snapshot: {error.str()}")
                self._commit_offsets(offsets)
            committed()
        finally:
            self._room.release()

    def _transactional(self, what: str, call: Callable[[], None]) -> None:
        """Run a transactional call: retry it while it fails with a retriable error (the broker is
        away: `poll` ends the job if that lasts); abort the transaction when the error requires it."""
        while True:
            try:
                call()
                self._progressed()
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError):
                    raise
                retry = err.retriable() and not err.txn_requires_abort() and not err.fatal()
                if retry and self._failure is None:
                    log.warning("%s did not complete (%s); trying again", what, err.str())
                    continue
                if err.txn_requires_abort():
                    self._abort()
                raise _failure(exc, what) from exc

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(self.timeout)
            self._in_transaction = False
        except KafkaException as exc:
            log.warning("could not abort the transaction: %s", exc)


def _addressed(message: Message, topic: str, key: bytes) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of a snapshot message, with the defaults it leaves out."""
    if isinstance(message, bytes):
        return topic, key, message
    if len(message) == 2:
        return topic, *message
    return message


def _failure(exc: KafkaException, what: str) -> Exception:
    """What a failed transactional call means: a fenced producer, that another instance took over
    this model; anything else, that Kafka failed us."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ):
        return OwnershipLost(f"fenced by a newer instance: {err.str()}")
    detail = err.str() if isinstance(err, KafkaError) else str(exc)
    return BrokerError(f"{what} failed: {detail}")
