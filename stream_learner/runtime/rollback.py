"""Rollback on request: the active learner returns to an older version's state and goes on from
the current frontier.

`Rollbacks.step` (about once a second on the polling loop) reads the model's requests from its
control topic (`stream_learner.kafka.control`). For a rollback to version V it reads V's chain from
the snapshot topic and verifies it as a restart would (`snapshots.history`, signatures included),
then hands the training worker a task that runs between two windows: load V's tensors and learner
state (learning rate, guard, recent items...) and make the next copy whole. That copy is published
as the next version, FULL, recording ``rollback: {to_version, request}``; it passes the quality gate,
which goes on with V's reference. The input is left where it is: windowing, consume position and
commit frontier continue, so the offset ranges still tile, nothing is read twice and nothing is
skipped; the model simply no longer holds what the windows trained since V taught it.

An ``accept`` request instead clears the gate's reference (the data changed for good: the snapshots
it holds are the new normal), so the next judged snapshots pass while the reference forms again.

Requests are taken in order, one at a time: the position after a request goes into the next
snapshot's ``control.next`` once it is handled, and for a rollback only with the rollback's own
version, so a crash before that commits leaves the request to the next active instance (until it
expires: a request that keeps failing cannot keep a learner restarting). One that cannot be applied
(a record too large or malformed, or not signed as ``[snapshot]`` requires; an unknown version, one
the topic no longer holds or whose state does not restore, another model spec; expired) is skipped:
the reason goes to the log, ``stream_learner_rollbacks_total{result="refused"}`` and
``stream_learner_control_requests_refused_total{reason}``. No record stops the learner. The command
line tells its operator either way, from the first version that records a position past the request.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from stream_learner.errors import SnapshotError
from stream_learner.kafka.control import ControlReader, ControlRefusal, ControlRequest, Refused
from stream_learner.learning.learner import Learner
from stream_learner.metrics import Metrics
from stream_learner.runtime.worker import Worker
from stream_learner.snapshots import history
from stream_learner.snapshots.fit import OptimiserLayout
from stream_learner.snapshots.format import Snapshot
from stream_learner.snapshots.publisher import Publisher, Rollback
from stream_learner.snapshots.state import StateCopier

log = logging.getLogger(__name__)

RollbackResult = Literal["applied", "accepted", "refused"]
#: How often (seconds) the control topic is polled.
CHECK_EVERY = 1.0


class Rollbacks:
    """Requests from the control topic, applied through the worker and the publisher."""

    def __init__(
        self,
        *,
        reader: ControlReader,
        publisher: Publisher,
        worker: Worker,
        learner: Learner,
        copier: StateCopier,
        history_to: Callable[[int], list[Snapshot]],
        metrics: Metrics,
        fits: OptimiserLayout | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.publisher = publisher
        self.worker = worker
        self.learner = learner
        self.copier = copier
        self.history_to = history_to  # the snapshot topic's verified history back to a version
        self.metrics = metrics
        self.fits = fits  # the optimiser state the learner needs (as its restore checks)
        self.clock = clock
        self._checked = 0.0
        self._queue: deque[tuple[int, ControlRequest | Refused]] = deque()
        self._awaiting: int | None = None  # control position a rollback in progress publishes
        if publisher.control_next is None:  # the first start: from now on, every snapshot records it
            publisher.control_next = publisher.control_published = reader.position

    def step(self) -> None:
        """Take the requests that arrived (at most every `CHECK_EVERY` seconds), in order; after a
        rollback, the next only once its version is published."""
        now = self.clock()
        if now - self._checked < CHECK_EVERY:
            return
        self._checked = now
        self._queue.extend(self.reader.poll())
        while self._queue and (self.publisher.control_next or 0) >= (self._awaiting or 0):
            offset, request = self._queue.popleft()
            if isinstance(request, Refused):
                self._refused(request.reason, f"control record at offset {offset}: {request.detail}")
            elif request.expired(int(now * 1000)):
                self._refused(
                    "expired", f"request {request.request} expired before an active instance read it"
                )
            elif request.action == "accept":
                self.publisher.gate.accept()
                self.metrics.rollbacks.labels("accepted").inc()
                log.warning(
                    "request %s: the model is accepted as it is; the quality gate's reference starts over",
                    request.request,
                )
            elif self._rollback(request, offset + 1):
                self._awaiting = offset + 1
                continue
            self.publisher.control_next = offset + 1

    def _rollback(self, request: ControlRequest, control_next: int) -> bool:
        """Hand the worker the restore of the version ``request`` asks for; False when refused."""
        version = request.to_version
        assert version is not None
        if version > self.publisher.version:
            why = f"v{version} is newer than v{self.publisher.version}"
            self._refused("unknown_version", f"request {request.request}: {why}")
            return False
        try:
            fold, spec = history.state_at(self.history_to(version), version)
            if self.fits is not None and spec == self.learner.spec:
                self.fits.check(version, fold.tensors, fold.meta)
        except SnapshotError as err:
            self._refused("unrestorable", f"request {request.request}: v{version} cannot be restored: {err}")
            return False
        if spec != self.learner.spec:
            self._refused("spec", f"request {request.request}: v{version} is another model ({spec})")
            return False
        state = fold.meta.state_dict()
        learner_state, gate_state = state.get("learner", {}), state.get("gate", {})
        tensors = fold.tensors
        del fold

        def restore() -> Rollback:  # on the training thread, between two windows
            self.learner.restore(tensors, learner_state)
            self.copier.since_full = None  # the version that records it is whole
            gate = gate_state if isinstance(gate_state, dict) else {}
            return Rollback(version, request.request, control_next, gate)

        self.worker.rollback(restore)
        self.metrics.rollbacks.labels("applied").inc()
        log.warning(
            "request %s: rolling back to v%d; the next version carries its state", request.request, version
        )
        return True

    def _refused(self, reason: ControlRefusal, why: str) -> None:
        self.metrics.rollbacks.labels("refused").inc()
        self.metrics.control_requests_refused.labels(reason).inc()
        log.error("refused a control request (%s): %s", reason, why)

    def close(self) -> None:
        self.reader.close()
