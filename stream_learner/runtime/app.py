"""The streaming job: wires the lease, the input, the learner, the worker and the snapshots together.

`App.run` enters its parts through one ExitStack (`_start` builds them once this instance owns the
model) and loops one line per step. A signal handler only calls `request_stop`. Offsets are committed
only together with the snapshot whose model includes them (see `Commits.frontier`), so in the
committed history each event is trained exactly once.
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
from stream_learner.errors import OwnershipLost
from stream_learner.ingest.codec import make_decoder
from stream_learner.ingest.windowing import make_windower
from stream_learner.kafka.admin import ensure_topics
from stream_learner.kafka.lease import Lease
from stream_learner.kafka.sink import Sink
from stream_learner.kafka.source import Source
from stream_learner.learning.learner import Learner
from stream_learner.learning.trainer import resolve_device
from stream_learner.metrics import CollectorRegistry, Metrics, MetricsServer
from stream_learner.runtime.commits import Commits
from stream_learner.runtime.intake import Intake
from stream_learner.runtime.report import Reporter, Summary, start_metrics_at_zero
from stream_learner.runtime.worker import Worker
from stream_learner.snapshots import warmstart
from stream_learner.snapshots.checkpoints import Checkpoints
from stream_learner.snapshots.publisher import Publisher
from stream_learner.snapshots.recovery import restore
from stream_learner.snapshots.state import StateCopier

log = logging.getLogger(__name__)

__all__ = ["App", "Summary"]


@dataclass(frozen=True)
class _Parts:
    """The parts the loop turns, once this instance owns the model."""

    lease: Lease
    sink: Sink
    worker: Worker
    intake: Intake
    commits: Commits
    reporter: Reporter


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
        self._beat = time.monotonic()  # the last turn of the loop, for /healthz
        self.learner: Learner | None = None  # the active model, once this instance owns it

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (safe from a signal handler)."""
        self._stop.set()

    def run(
        self, exit_when_idle: bool = False, on_progress: Callable[[Summary], None] | None = None
    ) -> Summary:
        started = time.monotonic()
        with ExitStack() as stack:
            p = self._start(stack)
            if p is None:  # asked to stop while standing by
                return self.summary
            self._ready = True
            while not self._stop.is_set():
                self._beat = time.monotonic()
                self._check_lease(p.lease)
                p.commits.submit(p.intake.step())
                p.intake.backpressure(p.worker.queued)
                p.commits.collect()
                p.commits.snapshot_if_due()
                p.sink.poll()
                p.reporter.report(on_progress)
                if exit_when_idle and p.commits.idle():
                    break
            self._ready = False
            p.commits.finish(keepalive=p.lease.poll)
            p.reporter.report(None)
        self.summary.events_per_second = self.summary.events / max(1e-9, time.monotonic() - started)
        return self.summary

    def _start(self, stack: ExitStack) -> _Parts | None:
        """Serve metrics, create the output topics, wait for the lease, restore the model and build
        the parts of the loop (each closed by ``stack``); None when stopped while standing by."""
        s = self.settings
        resolve_device(s.train.device)  # a GPU that is not there fails here, before anything is created
        server = stack.enter_context(
            MetricsServer(self.registry, s.metrics.host, s.metrics.port, self.ready, self.healthy)
        )
        self.summary.metrics_url = server.url
        self.metrics.model_info.info({"model": s.model.name, "kind": s.model.kind, "version": __version__})
        ensure_topics(s)
        lease = Lease(s, on_change=self._ownership_changed)
        stack.callback(lease.close)
        if not lease.wait(self._standing_by):
            return None
        source = Source(s)
        stack.callback(source.close)
        sink = Sink(s, commit_offsets=source.commit)
        sink.start()
        stack.callback(sink.close)
        learner = self.learner = Learner(s)
        windower = make_windower(s)
        restored = restore(s, learner, windower)
        warmstart.initialise(s, learner, restored)
        starts = source.start(restored.resume)
        windower.assign(source.partitions, self.clock())
        copier = StateCopier(learner, s.snapshot.full_every, restored.since_full, dict(restored.layout))
        worker = stack.enter_context(Worker(learner, copier))
        reporter = Reporter(
            metrics=self.metrics, summary=self.summary, source=source, windower=windower, clock=self.clock
        )
        folder = s.snapshot.checkpoint_dir
        publisher = Publisher(
            settings=s,
            sink=sink,
            spec_json=learner.spec.to_json(),
            clock=self.clock,
            on_committed=reporter.snapshot_committed,
            version=restored.version,
            committed_next=dict(starts),
            checkpoint=Checkpoints(folder, s.model.name).write if folder else None,
            window_end_ms=restored.meta.window_end_ms if restored.meta else None,
            newest_event_ms=restored.meta.newest_event_ms if restored.meta else 0,
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
        log.info(
            "active: model %s v%d, input %s from %s", s.model.name, restored.version, source.topic, starts
        )
        return _Parts(lease, sink, worker, intake, commits, reporter)

    def ready(self) -> bool:
        """For /readyz: this instance owns the model and is consuming."""
        return self._ready

    def healthy(self) -> bool:
        """For /healthz: the loop (active or standing by) turned within metrics.stall_seconds."""
        return time.monotonic() - self._beat < self.settings.metrics.stall_seconds

    def _standing_by(self) -> bool:
        self._beat = time.monotonic()
        return self._stop.is_set()

    def _ownership_changed(self, owned: bool) -> None:
        self.metrics.active.set(1 if owned else 0)
        self.metrics.rebalances.inc()

    @staticmethod
    def _check_lease(lease: Lease) -> None:
        if not lease.poll():
            raise OwnershipLost("the model lease was revoked: another instance is taking over")
