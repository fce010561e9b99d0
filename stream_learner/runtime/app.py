"""The streaming job: wires the lease, the input, the learner, the worker and the snapshots together.

`App.run` enters its parts through one ExitStack (`_start` builds them once this instance owns the
model) and loops one line per step. A signal handler only calls `request_stop`. Offsets are committed
only together with the snapshot whose model includes them (see `Commits.frontier`), so in the
committed history each event is trained exactly once.

Leaving is bounded: from a stop request, or from a failure, finishing and closing take at most
``delivery.shutdown_timeout_seconds`` (`leaving_since` tells a watchdog when leaving began). While a
snapshot commit makes no progress for ``delivery.stall_seconds`` the instance is not ready and not
active (`ready`, ``stream_learner_active``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from stream_learner import __version__
from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost, SnapshotError
from stream_learner.ingest.codec import make_decoder
from stream_learner.ingest.windowing import make_windower
from stream_learner.kafka.admin import check_cluster, ensure_topics, max_message_bytes
from stream_learner.kafka.control import ControlReader, ensure_control_topic
from stream_learner.kafka.lease import Lease
from stream_learner.kafka.sink import Sink
from stream_learner.kafka.source import Source
from stream_learner.learning.learner import Learner
from stream_learner.learning.trainer import resolve_device
from stream_learner.metrics import CollectorRegistry, Metrics, MetricsServer
from stream_learner.runtime.catchup import CatchUp
from stream_learner.runtime.commits import Commits
from stream_learner.runtime.distill import start_student
from stream_learner.runtime.intake import Intake, holds_input
from stream_learner.runtime.report import Reporter, Summary, start_metrics_at_zero
from stream_learner.runtime.rollback import Rollbacks
from stream_learner.runtime.worker import Worker
from stream_learner.snapshots import signing, warmstart
from stream_learner.snapshots.checkpoints import Checkpoints
from stream_learner.snapshots.history import history_to
from stream_learner.snapshots.publisher import Publisher
from stream_learner.snapshots.recovery import restore
from stream_learner.snapshots.state import StateCopier

log = logging.getLogger(__name__)

__all__ = ["App", "Summary"]

#: Seconds of the shutdown budget kept for closing the Kafka clients after the final snapshot.
CLOSE_RESERVE = 10.0


@dataclass(frozen=True)
class _Parts:
    """The parts the loop turns, once this instance owns the model."""

    lease: Lease
    sink: Sink
    worker: Worker
    intake: Intake
    commits: Commits
    reporter: Reporter
    rollbacks: Rollbacks
    catchup: CatchUp


class App:
    """The learner as a long-running job."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        start_metrics_at_zero(self.metrics, settings)
        self.clock = clock
        self.summary = Summary()
        self._stop = threading.Event()
        self._ready = False
        self._sink: Sink | None = None  # once active: whether it can commit says whether this is ready
        self._owned = False
        self._leaving: float | None = None  # monotonic time the job began to leave
        self._beat = time.monotonic()  # the last turn of the loop, for /healthz
        self.learner: Learner | None = None  # the active model, once this instance owns it
        self.metrics.active.set_function(lambda: 1.0 if self.ready() else 0.0)

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (safe from a signal handler)."""
        if self._leaving is None:
            self._leaving = time.monotonic()
        self._stop.set()

    @property
    def leaving_since(self) -> float | None:
        """The monotonic time the job began to leave (a stop request or a failure), else None."""
        return self._leaving

    def run(
        self, exit_when_idle: bool = False, on_progress: Callable[[Summary], None] | None = None
    ) -> Summary:
        started = time.monotonic()
        try:
            with ExitStack() as stack:
                p = self._start(stack)
                if p is None:  # asked to stop while standing by
                    return self.summary
                self._ready = True
                while not self._stop.is_set():
                    self._beat = time.monotonic()
                    self._check_lease(p.lease)
                    p.commits.submit(p.intake.step())
                    p.intake.backpressure(p.worker, p.commits.pending_events)
                    p.commits.collect()
                    p.commits.snapshot_if_due()
                    p.rollbacks.step()
                    p.catchup.step()
                    p.sink.poll()
                    p.reporter.report(on_progress)
                    if exit_when_idle and p.commits.idle():
                        break
                self._ready = False
                p.commits.finish(max(0.0, self._remaining() - CLOSE_RESERVE), keepalive=p.lease.poll)
                p.reporter.report(None)
        except BaseException:
            self._ready = False
            if self._leaving is None:
                self._leaving = time.monotonic()
            raise
        self.summary.events_per_second = self.summary.events / max(1e-9, time.monotonic() - started)
        return self.summary

    def _remaining(self) -> float:
        """Seconds left to finish and close: ``delivery.shutdown_timeout_seconds`` from when the job
        began to leave (all of it before)."""
        budget = self.settings.delivery.shutdown_timeout_seconds
        if self._leaving is None:
            self._leaving = time.monotonic()
        return max(0.0, self._leaving + budget - time.monotonic())

    def _start(self, stack: ExitStack) -> _Parts | None:
        """Check the cluster and the input topic, serve metrics, create the output topics, wait for
        the lease, restore the model and build the parts of the loop (each closed by ``stack``); None
        when stopped while standing by."""
        s = self.settings
        resolve_device(s.train.device)  # a GPU that is not there fails here, before anything is created
        signer, verifier = signing.signer(s.snapshot), signing.verifier(s.snapshot)  # keys fail here too
        check_cluster(s)  # no broker, no input topic: exit 2 within kafka.startup_timeout_seconds
        server = stack.enter_context(
            MetricsServer(self.registry, s.metrics.host, s.metrics.port, self.ready, self.healthy)
        )
        self.summary.metrics_url = server.url
        self.metrics.model_info.info({"model": s.model.name, "kind": s.model.kind, "version": __version__})
        ensure_topics(s)
        ensure_control_topic(s)
        spare = [Learner(s)]  # built (torch's lazy imports paid) before the lease: the input starts sooner
        lease = Lease(s, on_change=self._ownership_changed)
        stack.callback(lease.close)
        if not lease.wait(self._standing_by):
            return None
        source = Source(s)
        stack.callback(source.close)
        sink = Sink(
            s,
            source.commit,
            max_message_bytes(s, s.dead_letter.topic),
            while_waiting=lambda: self._check_lease(lease),
        )
        sink.start()
        stack.push(self._leaving_sink(sink))
        self._sink = sink
        restored = restore(
            s,
            lambda: (spare.pop() if spare else Learner(s), make_windower(s)),
            verifier=verifier,
            on_refused=self._refused,
            check_optimiser=True,
        )
        learner, windower = restored.learner, restored.windower
        self.summary.started_from(restored.version, restored.meta)
        self.learner = learner
        warmstart.initialise(s, learner, restored)
        starts = source.start(restored.resume)
        windower.assign(source.partitions, self.clock())
        copier = StateCopier(
            learner,
            s.snapshot.full_every,
            restored.since_full,
            dict(restored.layout),
            delta_first=s.snapshot.full_every > 1,  # a full snapshot is also sent as a delta before it
        )
        student = start_student(s, learner, restored.meta, self.metrics, signer, verifier, self._refused)
        worker = Worker(learner, copier)
        if student is not None:
            worker.student, worker.student_copier = student.student, student.copier
        worker.start()
        stack.callback(lambda: worker.close(self._remaining()))
        reporter = Reporter(
            metrics=self.metrics, summary=self.summary, source=source, windower=windower, clock=self.clock
        )
        folder = s.snapshot.checkpoint_dir
        publisher = Publisher(
            settings=s,
            sink=sink,
            spec_json=learner.spec.to_json(),
            clock=self.clock,
            sign=signer,
            on_committed=reporter.snapshot_committed,
            version=restored.version,
            committed_next=dict(starts),
            checkpoint=Checkpoints(folder, s.model.name, verifier).write if folder else None,
            window_end_ms=restored.meta.window_end_ms if restored.meta else None,
            newest_event_ms=restored.meta.newest_event_ms if restored.meta else 0,
            restored=restored.meta,
            companion=student.companion if student else None,
        )
        intake = Intake(
            settings=s,
            source=source,
            decoder=make_decoder(s, self.clock),
            windower=windower,
            dead_letters=sink,
            metrics=self.metrics,
            summary=self.summary,
            clock=self.clock,
            hold_for=worker
            if holds_input(s.window.hold_input_while_training, learner.trainer.device.type)
            else None,
        )
        commits = Commits(
            settings=s,
            worker=worker,
            publisher=publisher,
            windower=windower,
            source=source,
            reporter=reporter,
            clock=self.clock,
        )
        rollbacks = Rollbacks(
            reader=ControlReader(s, publisher.control_next, verifier.problem if verifier else None),
            publisher=publisher,
            worker=worker,
            learner=learner,
            copier=copier,
            history_to=lambda version: history_to(s, version, verifier),
            metrics=self.metrics,
            fits=restored.fits,
            clock=self.clock,
        )
        stack.callback(rollbacks.close)
        catchup = CatchUp(
            settings=s.catchup,
            source=source,
            windower=windower,
            knobs=commits,
            metrics=self.metrics,
            clock=self.clock,
        )
        log.info(
            "active: model %s v%d, input %s from %s", s.model.name, restored.version, source.topic, starts
        )
        return _Parts(lease, sink, worker, intake, commits, reporter, rollbacks, catchup)

    def ready(self) -> bool:
        """For /readyz and ``stream_learner_active``: this instance owns the model, is consuming and
        can commit (no snapshot commit has gone without progress for ``delivery.stall_seconds``)."""
        sink = self._sink
        stall = self.settings.delivery.stall_seconds
        return self._ready and self._owned and (sink is None or sink.stalled_for() < stall)

    def healthy(self) -> bool:
        """For /healthz: the loop (active or standing by) turned within metrics.stall_seconds."""
        return time.monotonic() - self._beat < self.settings.metrics.stall_seconds

    def _standing_by(self) -> bool:
        self._beat = time.monotonic()
        return self._stop.is_set()

    def _ownership_changed(self, owned: bool) -> None:
        self._owned = owned
        self.metrics.rebalances.inc()

    def _refused(self, err: SnapshotError) -> None:
        """A snapshot the restore skipped (it is logged where it was refused)."""
        self.metrics.snapshots_refused.labels(err.reason).inc()

    def _leaving_sink(self, sink: Sink) -> Callable[..., bool]:
        """How the sink is left (an exit callback of the job's stack): after losing the lease it is
        abandoned at once, so the job exits 3 without waiting for commits that cannot succeed;
        otherwise it finishes its work within the shutdown budget."""

        def leave(_type: object, exc: BaseException | None, _tb: object) -> bool:
            if isinstance(exc, OwnershipLost):
                sink.abandon()
            else:
                sink.close(self._remaining())
            return False

        return leave

    @staticmethod
    def _check_lease(lease: Lease) -> None:
        if not lease.poll():
            raise OwnershipLost(lease.why_not_owned())
