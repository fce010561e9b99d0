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

from stream_learner.admin import ensure_topics
from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost, WarmStartError
from stream_learner.learner import Learner
from stream_learner.metrics import Metrics, MetricsServer
from stream_learner.models import ModelSpec
from stream_learner.pipeline import Pipeline, Summary, make_decoder, make_windower
from stream_learner.publisher import Publisher
from stream_learner.sink import Sink
from stream_learner.snapshot import Snapshot
from stream_learner.source import Lease, Source
from stream_learner.subscriber import read_latest
from stream_learner.windowing import Windower
from stream_learner.worker import Worker

log = logging.getLogger(__name__)

__all__ = ["App", "Summary", "apply_snapshot"]


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
                MetricsServer(self.registry, s.metrics.host, s.metrics.port, self.ready)
            )
            self.summary.metrics_url = server.url
            ensure_topics(s)
            lease = Lease(s, on_change=lambda owned: self.metrics.active.set(1 if owned else 0))
            stack.callback(lease.close)
            if not lease.wait(self._stop.is_set):
                return self.summary
            source = Source(s)
            stack.callback(source.close)
            sink = Sink(s, commit_offsets=source.commit)
            sink.start()
            stack.callback(sink.close)
            learner = self.learner = Learner(s)
            windower = make_windower(s)
            version, resume = self._restore(learner, windower)
            starts = source.start(resume)
            windower.assign(source.partitions, self.clock())
            worker = stack.enter_context(Worker(learner))
            publisher = Publisher(
                s, sink, self.metrics, learner.spec.to_json(), self.clock, version, dict(starts)
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
            pipe.finish()
            pipe.report(None)
        self.summary.events_per_second = self.summary.events / max(1e-9, time.monotonic() - started)
        return self.summary

    def ready(self) -> bool:
        """For /readyz: this instance owns the model and is consuming."""
        return self._ready

    @staticmethod
    def _check_lease(lease: Lease) -> None:
        if not lease.poll():
            raise OwnershipLost("the model lease was revoked: another instance is taking over")

    def _restore(self, learner: Learner, windower: Windower) -> tuple[int, dict[int, int]]:
        """Load the newest committed snapshot; return its version and the offsets to resume from."""
        s = self.settings
        if s.warm_start.source != "topic":
            return 0, {}
        snapshot = read_latest(s.kafka, s.snapshot.topic, s.model.name)
        if snapshot is None:
            log.info("no snapshot of model %s on %s: starting fresh", s.model.name, s.snapshot.topic)
            return 0, {}
        apply_snapshot(snapshot, learner, windower)
        resume = {p: nxt for (t, p), nxt in snapshot.meta.resume_offsets().items() if t == s.input.topic}
        log.info("restored model %s v%d; resuming at %s", s.model.name, snapshot.meta.version, resume)
        return snapshot.meta.version, resume


def apply_snapshot(snapshot: Snapshot, learner: Learner, windower: Windower) -> None:
    """Load a snapshot into the learner and the windowing state; the spec must match."""
    spec = ModelSpec.from_json(snapshot.meta.spec)
    if spec != learner.spec:
        raise WarmStartError(
            f"snapshot v{snapshot.meta.version} has model spec {spec}, "
            f"but the configuration builds {learner.spec}"
        )
    state = snapshot.meta.state_dict()
    learner.restore(snapshot.tensors(), state.get("learner", {}))
    consumed = {int(p): int(o) for p, o in state.get("consumed", {}).items()}
    windower.restore(state.get("windowing", {}), consumed)
