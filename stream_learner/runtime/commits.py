"""From closed windows to committed snapshots: training queue, snapshot schedule and commit frontier.

`Commits` hands closed windows to the training worker, applies what comes back (results to the
reporter, state copies to the publisher) and decides when a snapshot is due. It holds what the
commit frontier needs between steps: the windows queued or in training (``pending``); the open
windows are the windower's and the consume position the source's. From these, `frontier` says which
offsets the model fully accounts for, which is what a snapshot may commit.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from stream_learner.config import Settings
from stream_learner.ingest.windowing import Window, Windower
from stream_learner.runtime.report import Reporter
from stream_learner.runtime.worker import Output, Worker
from stream_learner.snapshots.publisher import Publisher, Rollback

log = logging.getLogger(__name__)

#: How often (seconds) `snapshot_if_due` looks: the frontier is not worth computing for every batch.
DUE_CHECK_EVERY = 0.5


class Positions(Protocol):
    """The consume position (`stream_learner.kafka.source.Source`), and its consumer's group."""

    @property
    def positions(self) -> dict[int, int]: ...
    def group_metadata(self) -> Any: ...


class Commits:
    """Windows in training, and the snapshots that commit them."""

    def __init__(
        self,
        *,
        settings: Settings,
        worker: Worker,
        publisher: Publisher,
        windower: Windower,
        source: Positions,
        reporter: Reporter,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.publisher = publisher
        self.windower = windower
        self.source = source
        self.reporter = reporter
        self.clock = clock
        self.pending: deque[Window] = deque()  # queued or in training, in order
        self.flushed = False  # the final state requested at shutdown has been handled
        self._snapshot_requested = False
        self._waiting_since: float | None = None  # since when something waits for a snapshot
        self._due_checked = 0.0
        self._windows_since_snapshot = 0
        self.batch_multiplier = 1  # mini-batch size multiplier of the windows submitted (catch-up)
        self.snapshot_factor = 1  # snapshots this many times less often (catch-up)

    def submit(self, windows: list[Window]) -> None:
        """Queue closed windows for training; every ``snapshot.every_windows``-th (times
        ``snapshot_factor``) asks for a snapshot."""
        for window in windows:
            self._windows_since_snapshot += 1
            due = self._windows_since_snapshot >= self.settings.snapshot.every_windows * self.snapshot_factor
            if due:
                self._windows_since_snapshot = 0
            self.pending.append(window)
            self.worker.submit(window, snapshot=due, batch_multiplier=self.batch_multiplier)

    @property
    def pending_events(self) -> int:
        """Events of the windows queued or in training."""
        return sum(len(w) for w in self.pending)

    def collect(self, timeout: float | None = None) -> None:
        """Apply the worker's outputs: results to the reporter, state copies to the publisher."""
        for out in self.worker.outputs(timeout):
            if out.error is not None:
                raise out.error
            if out.window is not None:
                self.pending.popleft()
                assert out.result is not None
                self.reporter.record(out.result)
                self.publisher.trained(out.result, out.window, out.batch_multiplier)
            if out.rollback is not None:
                self._publish(out, out.rollback)
                continue
            if out.state is not None and (out.window is not None or self._unpublished()):
                self._publish(out)
            if out.window is None:
                self.flushed = True
                self._snapshot_requested = False

    def snapshot_if_due(self) -> None:
        """Publish what would otherwise wait for the next every-N-windows snapshot: at once when the
        input is idle, else once it has waited ``snapshot.interval_seconds``."""
        now = self.clock()
        if self._snapshot_requested or now - self._due_checked < DUE_CHECK_EVERY:
            return
        self._due_checked = now
        if not self._unpublished():
            self._waiting_since = None
            return
        if self.publisher.up_to_date and self.pending:  # offsets alone wait for the queued windows
            return
        if self._waiting_since is None:
            self._waiting_since = now if self.publisher.up_to_date else self.publisher.unpublished_since
        overdue = now - self._waiting_since >= self.settings.snapshot.interval_seconds * self.snapshot_factor
        if overdue or (not self.pending and self.windower.all_idle(now)):
            self.worker.request_snapshot()
            self._snapshot_requested = True

    def frontier(self) -> dict[int, int]:
        """Per partition, the next offset not yet accounted for by the model: the lowest offset of
        any window still open, queued or in training, else the consume position."""
        low = dict(self.source.positions)
        held = [w.offsets for w in self.pending]
        held.append({p: (lo, lo) for p, lo in self.windower.open_low_offsets().items()})
        for ranges in held:
            for p, (lo, _) in ranges.items():
                low[p] = min(low.get(p, lo), lo)
        return low

    def idle(self) -> bool:
        """Nothing left to do: input caught up and idle, no window open, queued or in training."""
        return (
            self.windower.all_idle(self.clock()) and not self.windower.open_low_offsets() and not self.pending
        )

    def finish(self, timeout: float, keepalive: Callable[[], object] | None = None) -> bool:
        """Shutdown: drop windows not started (their offsets stay uncommitted), finish the one in
        training, publish, commit. ``keepalive`` is called while waiting (to keep group memberships).
        Returns whether the final state was published within ``timeout``."""
        dropped = self.worker.drop_queued()
        self.flushed = False
        self.worker.request_snapshot()
        log.info("finishing: %d queued windows dropped (they will be read again), publishing", dropped)
        deadline = self.clock() + timeout
        while not self.flushed and self.clock() < deadline:
            self.collect(timeout=0.5)
            if keepalive is not None:
                keepalive()
        if not self.flushed:
            log.error(
                "the final snapshot was not handed over within %.0f s (delivery.shutdown_timeout_seconds); "
                "nothing more is committed",
                timeout,
            )
        return self.flushed

    def _unpublished(self) -> bool:
        """Something is accounted for but not committed: windows trained since the last snapshot,
        offsets passed without a window (dead letters, late events, replays), or control requests
        taken."""
        p = self.publisher
        return not p.up_to_date or p.control_moved or self.frontier() != p.committed_next

    def _publish(self, out: Output, rollback: Rollback | None = None) -> None:
        assert out.state is not None
        windowing = self.windower.state(self.publisher.window_end_ms)
        resume = {"windowing": windowing, "consumed": {str(p): o for p, o in self.source.positions.items()}}
        versions = self.publisher.publish(
            out.state, self.frontier(), resume, self.source.group_metadata(), rollback
        )
        for version in versions:
            self.reporter.snapshot_published(version)
