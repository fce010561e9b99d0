"""The training thread of one rank: the collective steps of a distributed job.

The polling loop (main thread) keeps the rank's consumer alive and hands over, with every turn, the
windows it closed, its dead letters and its `LocalStatus`, in one `Turn`, so that what the training
thread knows is always consistent (every window the status's positions imply is there). The
training thread turns *rounds*; every round is collective, on every rank at once:

1. exchange the ranks' `Facts` and `decide` (the job's close horizon, which the polling loop applies
   next; the window to train; stop);
2. train that window's share of this rank (its own window of that start, or an empty one), every
   rank in the same step (`Learner.process` with a `ShardedTrainer`), and make the result the
   window's over the job (events summed, newest event time the maximum);
3. when a snapshot is due (the same rules as a single process: every ``snapshot.every_windows``
   trained windows; once idle or ``snapshot.interval_seconds`` after something changed; at a stop
   when something changed): copy this rank's part of the state (`ShardCopier`) and gather it to rank
   0 with the rank's commit frontier, consume positions, dead letters and learner counters; rank 0
   joins the parts into the snapshot a single process would have cut and hands it to its polling
   loop, which publishes it in one transaction with every rank's offsets and dead letters.

A round with nothing to do waits up to `ROUND_WAIT` for the next turn first. Collectives wait at most
``distributed.timeout_seconds``; a failure ends the rank (and torchrun restarts the group).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import NO_TIME, Window
from stream_learner.learning.collective import Group
from stream_learner.learning.learner import Learner, WindowResult
from stream_learner.runtime import heap
from stream_learner.runtime.dead_letters import DeadLetter
from stream_learner.runtime.distributed import letters
from stream_learner.runtime.distributed.status import Facts, LocalStatus, decide, frontier
from stream_learner.runtime.worker import drain
from stream_learner.snapshots.shards import ShardCopier, assemble, decode_part, encode_part
from stream_learner.snapshots.state import StateCopy

log = logging.getLogger(__name__)

#: How long a round with nothing to do waits for the polling loop's next turn.
ROUND_WAIT = 0.05


@dataclass(frozen=True)
class Turn:
    """What one turn of the polling loop hands over."""

    windows: list[Window]
    letters: list[DeadLetter]
    status: LocalStatus


@dataclass(frozen=True)
class Publication:
    """A snapshot to publish (rank 0): the joined state and every rank's offsets and dead letters."""

    state: StateCopy
    frontier: dict[int, int]
    consumed: dict[int, int]
    letters: list[DeadLetter]


@dataclass(frozen=True)
class Output:
    result: WindowResult | None = None
    publication: Publication | None = None
    stopped: bool = False
    error: BaseException | None = None


@dataclass
class Coordinator:
    settings: Settings
    group: Group
    learner: Learner
    copier: ShardCopier
    close_ms: int  # the job's close horizon, which the polling loop applies
    committed: dict[int, int]  # this rank's commit frontier as of the last snapshot
    clock: Callable[[], float] = time.time
    _inbox: queue.Queue[Turn] = field(default_factory=queue.Queue)
    _outbox: queue.Queue[Output] = field(default_factory=queue.Queue)
    _waiting: deque[Window] = field(default_factory=deque)
    _letters: list[DeadLetter] = field(default_factory=list)
    _status: LocalStatus | None = None
    _submitted: int = 0
    _done: int = 0
    _events_submitted: int = 0  # written by the polling loop only
    _events_done: int = 0  # written by the training thread only
    _idle: threading.Event = field(default_factory=threading.Event)  # no training or copy in progress
    _taken: threading.Condition = field(default_factory=threading.Condition)  # a window left the queue
    _trained_since: int = 0  # windows trained since the last snapshot
    _settled: bool = False  # the heap settled after the first window trained (`heap.settle`)
    _windows_since: int = 0  # towards snapshot.every_windows
    _unpublished_since: float | None = None
    _leaving: bool = False
    _thread: threading.Thread | None = None

    # -- the polling loop's side ---------------------------------------------------------------
    def start(self) -> None:
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop turning rounds and wait up to ``timeout`` for the one in progress."""
        self._leaving = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # waiting in a collective: it ends with the process
                log.error("the training thread did not stop within %.0f s; leaving it", timeout)

    def submit(self, turn: Turn) -> None:
        self._submitted += len(turn.windows)
        self._events_submitted += sum(len(w) for w in turn.windows)
        self._inbox.put(turn)

    @property
    def queued(self) -> int:
        """Windows handed over and not trained yet."""
        return self._submitted - self._done

    @property
    def pending_events(self) -> int:
        """Events of this rank's windows handed over and not trained yet (the one in training too)."""
        return self._events_submitted - self._events_done

    @property
    def busy(self) -> bool:
        """A window's training or a snapshot's copy is in progress on this rank."""
        return not self._idle.is_set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no training or copy is in progress."""
        return self._idle.wait(timeout)

    def wait_for_room(self, bound: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until fewer than ``bound`` windows are queued."""
        with self._taken:
            return self._taken.wait_for(lambda: self.queued < bound, timeout)

    def outputs(self, timeout: float | None = None) -> list[Output]:
        """Outputs ready now; with a timeout, wait that long for the first one."""
        return drain(self._outbox, timeout)

    # -- the training thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            busy = False
            while not self._leaving:
                if not self._take_turns(wait=not busy):
                    continue
                busy, stopped = self._round()
                if stopped:
                    return
        except BaseException as exc:  # surfaced to the polling loop, which ends the rank
            self._outbox.put(Output(error=exc))

    def _take_turns(self, wait: bool) -> bool:
        """Take the turns handed over (waiting for one when ``wait``); whether a status is known."""
        try:
            turn = self._inbox.get(timeout=ROUND_WAIT) if wait or self._status is None else None
            while True:
                if turn is not None:
                    self._waiting.extend(turn.windows)
                    self._letters.extend(turn.letters)
                    self._status = turn.status
                turn = self._inbox.get_nowait()
        except queue.Empty:
            return self._status is not None

    def _round(self) -> tuple[bool, bool]:
        """One collective round; returns (whether it did something, whether the job stops)."""
        status = self._status
        assert status is not None
        moved = frontier(status, list(self._waiting)) != self.committed
        since = self._unpublished_since
        overdue = (
            self.group.rank == 0
            and since is not None
            and (self.clock() - since >= self.settings.snapshot.interval_seconds)
        )
        next_start = self._waiting[0].start_ms if self._waiting else None
        facts = Facts.of(status, next_start, bool(self._waiting), moved, overdue)
        decision = decide(self.group.gather_ints(facts.row()), self.close_ms, self._size_ms)
        self.close_ms = decision.close_ms
        if decision.stop:
            if self._trained_since or decision.moved:
                self._snapshot(status)
            self._outbox.put(Output(stopped=True))
            return True, True
        trained = decision.train_start_ms is not None
        if decision.train_start_ms is not None:
            self._train(decision.train_start_ms)
        unpublished = self._trained_since > 0 or decision.moved
        if unpublished and self._unpublished_since is None:
            self._unpublished_since = self.clock()
        every = self._windows_since >= self.settings.snapshot.every_windows
        offsets_wait = self._trained_since == 0 and decision.pending  # for the windows queued
        due = (trained and every) or (
            unpublished and not offsets_wait and (decision.overdue or decision.idle)
        )
        if due:
            if every:
                self._windows_since = 0
            self._snapshot(status)
        return trained or due, False

    @property
    def _size_ms(self) -> int:
        return int(self.settings.window.size_seconds * 1000)

    def _train(self, start_ms: int) -> None:
        """Train this rank's share of the window starting at ``start_ms`` (empty when it has none)."""
        if self._waiting and self._waiting[0].start_ms == start_ms:
            window = self._waiting.popleft()
            with self._taken:
                self._done += 1
                self._taken.notify_all()
        else:
            empty = EventBatch.empty(len(self.settings.model.context_fields))
            window = Window(start_ms, start_ms + self._size_ms, empty, {}, "watermark")
        with self._working():
            try:
                result = self.learner.process(window)
                mine = [result.events, result.newest_event_ms if result.events else NO_TIME]
                job = self.group.gather_ints(mine)
            finally:
                self._events_done += len(window)
        if not self._settled and result.step is not None:
            heap.settle()
            self._settled = True
        self._outbox.put(
            Output(result=replace(result, events=int(job[:, 0].sum()), newest_event_ms=int(job[:, 1].max())))
        )
        self._trained_since += 1
        self._windows_since += 1

    @contextmanager
    def _working(self) -> Iterator[None]:
        """Mark this rank's training thread `busy` for the duration."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def _snapshot(self, status: LocalStatus) -> None:
        """Copy this rank's part of the state and gather it to rank 0 (see the module's docstring)."""
        with self._working():
            self._gather_snapshot(status)

    def _gather_snapshot(self, status: LocalStatus) -> None:
        kind, tensors, whole = self.copier.copy()
        mine = frontier(status, list(self._waiting))
        info: dict[str, Any] = {
            "frontier": {str(p): o for p, o in mine.items()},
            "consumed": {str(p): o for p, o in status.positions.items()},
            "events_trained": self.learner.events_trained,
            "recent_items": self.learner.recent_items(),
            "letters": letters.to_json(self._letters),
        }
        parts = self.group.gather_bytes(encode_part(tensors, info))
        wholes = None if whole is None else self.group.gather_bytes(encode_part(whole, {}))
        self.committed = mine
        self._letters = []
        self._trained_since = 0
        self._unpublished_since = None
        if parts is not None:
            publication = self._join(kind, [decode_part(p) for p in parts])
            if wholes is not None:  # the whole state after its delta (`ShardCopier.delta_first`)
                full = assemble("FULL", [decode_part(p)[0] for p in wholes])
                publication = replace(publication, state=replace(publication.state, full=full))
            self._outbox.put(Output(publication=publication))

    def _join(self, kind: Any, parts: list[tuple[dict[str, Any], dict[str, Any]]]) -> Publication:
        """Rank 0: the snapshot of the whole job from every rank's part."""
        infos = [info for _, info in parts]
        state = self.learner.state()
        state["events_trained"] = sum(int(i["events_trained"]) for i in infos)
        state["recent_items"] = _merge_recent(
            [i["recent_items"] for i in infos], self.settings.snapshot.recent_items
        )

        def offsets(key: str) -> dict[int, int]:
            return {int(p): int(o) for i in infos for p, o in i[key].items()}

        return Publication(
            state=StateCopy(assemble(kind, [t for t, _ in parts]), state, kind),
            frontier=offsets("frontier"),
            consumed=offsets("consumed"),
            letters=[d for i in infos for d in letters.from_json(i["letters"])],
        )


def _merge_recent(lists: list[list[str]], limit: int) -> list[str]:
    """The ranks' recently active items (each newest first) taken in turns, without repeats."""
    out: dict[str, None] = {}
    for position in range(max((len(items) for items in lists), default=0)):
        for items in lists:
            if position < len(items):
                out.setdefault(items[position])
    return list(out)[:limit]
