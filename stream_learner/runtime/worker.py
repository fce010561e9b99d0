"""The training worker: a thread that runs `Learner.process` beside the polling loop.

Windows go in through a queue, results come out through another, in order. torch releases the GIL
while it computes, so polling keeps the consumer alive during long steps. When a result is marked
for a snapshot, the worker copies the model state right after that window, before the next one
(`stream_learner.snapshots.state.StateCopier`: whole or as a delta). A student beside the model
(``[distill]``) learns each window right after the model, and its state is copied with the model's.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner, WindowResult
from stream_learner.learning.student import Student
from stream_learner.runtime import heap
from stream_learner.snapshots.publisher import Rollback
from stream_learner.snapshots.state import StateCopier, StateCopy

log = logging.getLogger(__name__)

#: How long leaving a ``with Worker(...)`` block waits for a training step in progress.
JOIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Output:
    window: Window | None  # None for a snapshot requested outside a window
    result: WindowResult | None
    state: StateCopy | None = None
    error: BaseException | None = None
    rollback: Rollback | None = None  # the state copied is an older version's, restored on request
    batch_multiplier: int = 1  # the window was trained with mini-batches this many times the size


@dataclass(frozen=True)
class _Job:
    window: Window | None
    snapshot: bool
    restore: Callable[[], Rollback] | None = None
    batch_multiplier: int = 1


@dataclass
class Worker:
    learner: Learner
    copier: StateCopier
    student: Student | None = None  # trained on the learner's outputs, after it
    student_copier: StateCopier | None = None
    _inbox: queue.Queue[_Job | None] = field(default_factory=queue.Queue)
    _outbox: queue.Queue[Output] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _taken: threading.Condition = field(default_factory=threading.Condition)  # a job left the inbox
    _idle: threading.Event = field(default_factory=threading.Event)  # no job in progress
    _settled: bool = False  # the heap settled after the first window trained (`heap.settle`)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(JOIN_TIMEOUT)

    def start(self) -> None:
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Drop the windows not started and wait up to ``timeout`` seconds for a step in progress
        (shutdown waited for it already)."""
        self.drop_queued()
        self._inbox.put(None)
        if self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():  # a hung step: the (daemon) thread ends with the process
                log.error("the training thread did not stop within %.0f s; leaving it", timeout)

    def submit(self, window: Window, snapshot: bool, batch_multiplier: int = 1) -> None:
        """Train ``window`` (with mini-batches ``batch_multiplier`` times their ordinary size), then
        copy the state when ``snapshot``."""
        self._inbox.put(_Job(window, snapshot, batch_multiplier=batch_multiplier))

    def request_snapshot(self) -> None:
        """Copy the state once the windows already submitted are done."""
        self._inbox.put(_Job(None, True))

    def rollback(self, restore: Callable[[], Rollback]) -> None:
        """Once the windows already submitted are done, run ``restore`` (it loads an older version's
        state into the learner) and copy the state."""
        self._inbox.put(_Job(None, True, restore))

    @property
    def queued(self) -> int:
        return self._inbox.qsize()

    def wait_for_room(self, bound: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until fewer than ``bound`` jobs are queued."""
        with self._taken:
            return self._taken.wait_for(lambda: self.queued < bound, timeout)

    @property
    def busy(self) -> bool:
        """A job (training a window, copying or restoring state) is in progress."""
        return not self._idle.is_set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no job is in progress."""
        return self._idle.wait(timeout)

    def drop_queued(self) -> int:
        """Forget windows not yet started (their offsets stay uncommitted); return how many."""
        dropped = 0
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return dropped
            dropped += job is not None and job.window is not None

    def outputs(self, timeout: float | None = None) -> list[Output]:
        """Outputs ready now; with a timeout, wait that long for the first one."""
        return drain(self._outbox, timeout)

    def _take(self) -> _Job | None:
        self._idle.set()
        job = self._inbox.get()
        self._idle.clear()
        with self._taken:
            self._taken.notify_all()
        return job

    def _run(self) -> None:
        while (job := self._take()) is not None:
            try:
                rollback = job.restore() if job.restore is not None else None
                self.learner.trainer.batch_multiplier = job.batch_multiplier
                result = self.learner.process(job.window) if job.window is not None else None
                if self.student is not None and result is not None:
                    self.student.trainer.batch_multiplier = job.batch_multiplier
                    self.student.learn(result)
                state = self._copy() if job.snapshot else None
                if not self._settled and result is not None and result.step is not None:
                    heap.settle()
                    self._settled = True
                out = Output(
                    job.window, result, state, rollback=rollback, batch_multiplier=job.batch_multiplier
                )
                self._outbox.put(out)
            except BaseException as exc:  # surfaced to the polling loop, which stops the job
                self._outbox.put(Output(job.window, None, error=exc))
                return

    def _copy(self) -> StateCopy:
        """The learner's state, with the student's beside it."""
        state = self.copier.copy()
        if self.student_copier is None:
            return state
        return replace(state, companion=self.student_copier.copy())


T = TypeVar("T")


def drain(box: queue.Queue[T], timeout: float | None = None) -> list[T]:
    """The items in ``box`` now; with a timeout, wait that long for the first one."""
    out: list[T] = []
    try:
        if timeout is not None:
            out.append(box.get(timeout=timeout))
        while True:
            out.append(box.get_nowait())
    except queue.Empty:
        return out
