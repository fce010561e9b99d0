"""Serving with current features: the input topic, applied to the real-time features of the model.

A snapshot carries the real-time features (`stream_learner.learning.realtime`) as of the input offsets
it includes. `InputFollower` reads the learner's input topic from there and applies every valid
event to them with `RealtimeFeatures.apply`, the code the learner folds its windows with, so a
request is scored with what the stream knew a moment before it, and exactly as the learner would
score an event of the same pair at that point of the input (docs/decisions/realtime-features.md).

What is applied, from the snapshot the features are based on: messages at or after its offsets,
decoded and validated by the learner's codec (dead letters are left out, as the learner leaves them
out), except events older than its horizon (the end of its newest window): those were read before
the snapshot and are in its state already, or were late for the learner, which counts no late event.
An event that arrives late for a window the learner closes after the snapshot is counted here until
the next snapshot rebases the features (the learner does not count it).

Rebasing: each new version served brings the learner's features as of its offsets. The follower keeps
the events it applied since the offsets of the version it is based on (as id keys, a compact buffer,
at most ``max_buffered`` events) and rebuilds the features from the new version plus those of them at
or after its offsets, off the lock that requests take; only the events applied meanwhile are applied
under it, before the swap. When the buffer does not reach back to the new offsets (it overflowed),
the follower reads the input again from them. Nothing is counted twice or missed either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_learner.config import Settings
from stream_learner.errors import BrokerError
from stream_learner.ingest.codec import Decoder, make_decoder
from stream_learner.ingest.events import EventBatch
from stream_learner.kafka.source import Source
from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.realtime import NO_TIME, RealtimeFeatures, Stream
from stream_learner.metrics import SubscriberMetrics
from stream_learner.snapshots.format import SnapshotMeta

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
#: Events of a buffered chunk at most (a long consume is cut: the buffer drops whole chunks).
MAX_BUFFERED = 2_000_000
#: Observations of the feature lag per applied batch: its events' lags at evenly spaced ranks (the
#: oldest and the newest among them), so that the histogram follows the events, not the batches.
LAG_SAMPLES = 10


@dataclass(frozen=True)
class _Chunk:
    """Events applied together: where they came from, their id keys, times and labels."""

    seq: int
    partition: np.ndarray
    offset: np.ndarray
    user: np.ndarray
    item: np.ndarray
    time_ms: np.ndarray
    label: np.ndarray

    def after(self, frontier: dict[int, int], horizon_ms: int) -> np.ndarray:
        """Which of its events a base with these offsets and horizon does not hold yet."""
        starts = np.array([frontier.get(int(p), 0) for p in self.partition], np.int64)
        return (self.offset >= starts) & (self.time_ms >= horizon_ms)


@dataclass(frozen=True)
class _Base:
    """The features of one snapshot, as the events after its offsets are applied to them."""

    version: int
    features: RealtimeFeatures
    mapper: FeatureMapper
    topic: str
    frontier: dict[int, int]
    horizon_ms: int


def _where(meta: SnapshotMeta) -> tuple[str, dict[int, int], int]:
    """The input topic, the next offset per partition and the horizon of a snapshot."""
    topics = {r.topic for r in meta.offsets}
    if len(topics) != 1:
        raise ValueError(f"v{meta.version} records offsets of {len(topics)} input topics, not one")
    frontier = {p: nxt for (_, p), nxt in meta.resume_offsets().items()}
    windowing = meta.state_dict().get("windowing", {})
    return topics.pop(), frontier, int(windowing.get("horizon_ms", NO_TIME))


class InputFollower:
    """Applies the input topic to the real-time features of the model served (see the module)."""

    def __init__(
        self,
        settings: Settings,
        metrics: SubscriberMetrics,
        clock: Callable[[], float] = time.time,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        """``settings``: the learner's [kafka], [input] (format, registry) and [validation]; the topic
        comes from the snapshots."""
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._max_buffered = max_buffered
        ids_only = settings.model.model_copy(update={"context_fields": []})  # the features count ids only
        self._decoder: Decoder = make_decoder(settings.model_copy(update={"model": ids_only}), clock)
        self._lock = threading.Lock()
        self._based = threading.Condition(self._lock)
        self._base: _Base | None = None
        self._buffer: deque[_Chunk] = deque()
        self._buffered = 0
        self._covers: dict[int, int] = {}  # per partition, the buffer holds every event from here
        self._seq = 0
        self._reread = True
        self._position: dict[int, int] = {}  # next offset read, per partition
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> InputFollower:
        self._thread = threading.Thread(target=self._run, name="input-follower", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._based:
            self._based.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- serving -------------------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        """The version whose features are served (plus the input after it)."""
        base = self._base
        return base.version if base else None

    def query(self, rows: np.ndarray, at_ms: int) -> np.ndarray | None:
        """The real-time inputs of (n, counted) ``rows`` at ``at_ms``, or None before a first base."""
        with self._lock:
            if self._base is None:
                return None
            return self._base.features.query(rows, np.full(len(rows), at_ms, np.int64))

    def position(self) -> dict[int, int]:
        """Per partition, the next offset not yet read (events before it are applied)."""
        with self._lock:
            return dict(self._position)

    def wait_for(self, positions: dict[int, int], timeout: float) -> bool:
        """Wait until every partition in ``positions`` has been applied up to that offset."""
        deadline = self._clock() + timeout
        while self._clock() < deadline:
            read = self.position()
            if all(read.get(p, -1) >= o for p, o in positions.items()):
                return True
            time.sleep(0.01)
        return False

    # -- rebasing ------------------------------------------------------------------------------
    def rebase(self, meta: SnapshotMeta, mapper: FeatureMapper) -> None:
        """Base the features on version ``meta`` (its features in ``mapper.realtime``, which this
        follower then owns and changes): the events buffered since its offsets are applied to them
        off the lock, those applied meanwhile under it, then the new base replaces the old."""
        features = mapper.realtime
        if features is None:
            return
        topic, frontier, horizon = _where(meta)
        base = _Base(meta.version, features, mapper, topic, frontier, horizon)
        with self._lock:
            old = self._base
            covered = old is not None and old.topic == topic and self._reaches(frontier)
            chunks = list(self._buffer) if covered else []
            seen = self._seq
        for chunk in chunks:
            self._reapply(base, chunk)
        with self._based:
            if covered:
                for chunk in self._buffer:
                    if chunk.seq >= seen:
                        self._reapply(base, chunk)
                self._trim(frontier)
            else:
                self._reread = True
            self._base = base
            self._based.notify_all()
        self.metrics.features_rebased.labels("buffer" if covered else "reread").inc()

    def _reaches(self, frontier: dict[int, int]) -> bool:
        """The buffer holds every event applied at or after ``frontier``."""
        return all(self._covers.get(p, offset + 1) <= offset for p, offset in frontier.items())

    def _reapply(self, base: _Base, chunk: _Chunk) -> None:
        keep = chunk.after(base.frontier, base.horizon_ms)
        if keep.any():
            rows = base.mapper.counted_rows(chunk.user[keep], chunk.item[keep])
            base.features.apply(Stream.of(rows, chunk.time_ms[keep], chunk.label[keep]))

    def _trim(self, frontier: dict[int, int]) -> None:
        """Drop the chunks that hold nothing at or after ``frontier``."""
        while (
            self._buffer
            and not (
                self._buffer[0].offset >= [frontier.get(int(p), 0) for p in self._buffer[0].partition]
            ).any()
        ):
            self._buffered -= len(self._buffer.popleft().offset)
        self._covers = {p: max(self._covers.get(p, o), o) for p, o in frontier.items()}

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        source: Source | None = None
        topic = None
        while not self._stop.is_set():
            try:
                with self._based:
                    self._based.wait_for(lambda: self._base is not None or self._stop.is_set())
                    base = self._base
                    reread, self._reread = self._reread, False
                if base is None:
                    continue
                if source is None or topic != base.topic or reread:
                    if source is not None and topic != base.topic:
                        source.close()
                        source = None
                    topic = base.topic
                    source = source or Source(self._input_settings(topic))
                    self._restart(source, base)
                messages, _ = source.consume(self.settings.input.poll_timeout_seconds)
                if messages:
                    self._apply(messages)
            except BrokerError as exc:
                log.warning("following the input of the served model failed (%s); retrying", exc)
                self._stop.wait(RETRY_SECONDS)
            except Exception:  # the features served stay; following must not die
                log.exception("following the input of the served model failed; retrying")
                self._stop.wait(RETRY_SECONDS)
        if source is not None:
            source.close()

    def _input_settings(self, topic: str) -> Settings:
        return self.settings.model_copy(
            update={"input": self.settings.input.model_copy(update={"topic": topic})}
        )

    def _restart(self, source: Source, base: _Base) -> None:
        """Read from the base's offsets again, forgetting what was buffered."""
        starts = source.start(base.frontier)
        with self._lock:
            self._buffer.clear()
            self._buffered = 0
            self._covers = dict(starts)
            self._position = dict(starts)
        log.info("following %s from the offsets of v%d for the real-time features", base.topic, base.version)

    def _apply(self, messages: Sequence[Any]) -> None:
        decoded = self._decoder.decode(messages)
        batch: EventBatch = decoded.batch
        read: dict[int, int] = {}
        for m in messages:  # the newest offset per partition: the last of each
            read[m.partition()] = m.offset() + 1
        produced = np.fromiter((m.timestamp()[1] for m in messages), np.int64, len(messages))
        with self._lock:
            base = self._base
            assert base is not None
            self._seq += 1
            chunk = _Chunk(
                self._seq,
                batch.partition.astype(np.int64),
                batch.offset,
                batch.user,
                batch.item,
                batch.timestamp_ms,
                batch.label.astype(np.float64),
            )
            self._reapply(base, chunk)
            self._buffer.append(chunk)
            self._buffered += len(batch)
            while self._buffered > self._max_buffered and len(self._buffer) > 1:
                dropped = self._buffer.popleft()
                self._buffered -= len(dropped.offset)
                for p in np.unique(dropped.partition):
                    last = int(dropped.offset[dropped.partition == p].max()) + 1
                    self._covers[int(p)] = max(self._covers.get(int(p), last), last)
            for p, nxt in read.items():
                self._position[p] = max(self._position.get(p, nxt), nxt)
        self.metrics.features_applied.inc(len(batch))
        stamped = produced[produced > 0]
        if len(stamped):  # the lag of the batch's events, one observation per tenth of them
            lags = np.maximum(0.0, self._clock() - np.sort(stamped) / 1000)
            for lag in lags[np.linspace(0, len(lags) - 1, min(LAG_SAMPLES, len(lags))).astype(int)]:
                self.metrics.feature_lag.observe(float(lag))
