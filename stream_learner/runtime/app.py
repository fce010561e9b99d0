"""The streaming job: wires lease, source, sink, learner, worker, publisher and pipeline.

`App.run` enters its parts through one ExitStack and loops one line per step. A signal handler only
calls `request_stop`. Offsets are committed only together with the snapshot whose model includes
them (see `Pipeline.frontier`), so in the committed history each event is trained exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack

from prometheus_client import CollectorRegistry

from stream_learner import __version__
from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost
from stream_learner.kafka.admin import ensure_topics
from stream_learner.kafka.sink import Sink
from stream_learner.kafka.source import Lease, Source
from stream_learner.learning.learner import Learner
from stream_learner.metrics import Metrics, MetricsServer
from stream_learner.runtime.pipeline import Pipeline, Summary, make_decoder, make_windower
from stream_learner.runtime.worker import Worker
from stream_learner.snapshots import warmstart
from stream_learner.snapshots.publisher import Publisher
from stream_learner.snapshots.recovery import Checkpoints, restore

log = logging.getLogger(__name__)

__all__ = ["App", "Summary"]


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
        s = self.settings
        started = time.monotonic()
        with ExitStack() as stack:
            server = stack.enter_context(
                MetricsServer(self.registry, s.metrics.host, s.metrics.port, self.ready, self.healthy)
            )
            self.summary.metrics_url = server.url
            self.metrics.model_info.info(
                {"model": s.model.name, "kind": s.model.kind, "version": __version__}
            )
            ensure_topics(s)
            lease = Lease(s, on_change=self._ownership_changed)
            stack.callback(lease.close)
            if not lease.wait(self._standing_by):
                return self.summary
            source = Source(s)
            stack.callback(source.close)
            sink = Sink(s, commit_offsets=source.commit)
            sink.start()
            stack.callback(sink.close)
            learner = self.learner = Learner(s)
            windower = make_windower(s)
            restored = restore(s, learner, windower)
            warmstart.initialise(s, learner, restored)
            version = restored.version
            starts = source.start(restored.resume)
            windower.assign(source.partitions, self.clock())
            worker = stack.enter_context(
                Worker(learner, s.snapshot.full_every, restored.since_full, dict(restored.layout))
            )
            folder = s.snapshot.checkpoint_dir
            checkpoint = Checkpoints(folder, s.model.name).write if folder else None
            publisher = Publisher(
                s,
                sink,
                self.metrics,
                learner.spec.to_json(),
                self.clock,
                version,
                dict(starts),
                checkpoint=checkpoint,
                window_end_ms=restored.meta.window_end_ms if restored.meta else None,
                newest_event_ms=restored.meta.newest_event_ms if restored.meta else 0,
            )
            pipe = Pipeline(
                s,
                source,
                sink,
                worker,
                publisher,
                windower,
                make_decoder(s, self.clock),
                self.metrics,
                self.summary,
                self.clock,
            )
            log.info(
                "active: model %s v%d, input %s from offsets %s", s.model.name, version, source.topic, starts
            )
            self._ready = True
            while not self._stop.is_set():
                self._beat = time.monotonic()
                self._check_lease(lease)
                pipe.ingest()
                pipe.backpressure()
                pipe.collect()
                pipe.snapshot_if_due()
                sink.poll()
                pipe.report(on_progress)
                if exit_when_idle and pipe.idle():
                    break
            self._ready = False
            pipe.finish(keepalive=lease.poll)
            pipe.report(None)
        self.summary.events_per_second = self.summary.events / max(1e-9, time.monotonic() - started)
        return self.summary

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
