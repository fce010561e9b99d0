"""One rank of a distributed job (``stream-learner run`` under torchrun): start-up and the polling loop.

Rank r of N reads the input partitions p with p mod N = r (more ranks than partitions: a
`ConfigError`, exit 2), windows them with a `JobWindower` and trains on a `Coordinator` thread,
with a `ShardedTrainer` holding 1/N of every id table. Only rank 0 talks to the output side of
Kafka: it takes the model's lease, owns the transactional producer (fencing any older instance
before any rank restores) and publishes the snapshots the coordinator joins, with every rank's
offsets and dead letters, in one transaction each. Every rank restores the newest committed
snapshot itself (the layout of a single process: each rank takes its rows) and the ranks check that
they restored the same version.

The polling loop is the single process's, one line per step: consume, decode and window (closing
what the job's horizon allows), hand the turn to the training thread, backpressure, apply what it
returns. Stopping is agreed: a stop asked on any rank (SIGTERM) stops all of them after the step in
progress, with a final snapshot.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from stream_learner import __version__
from stream_learner.config import Settings
from stream_learner.errors import OwnershipLost, SnapshotError
from stream_learner.ingest.codec import make_decoder
from stream_learner.ingest.job_windows import JobWindower
from stream_learner.kafka.admin import check_cluster, ensure_topics, max_message_bytes
from stream_learner.kafka.lease import Lease
from stream_learner.kafka.sink import Sink
from stream_learner.kafka.source import Source
from stream_learner.learning.collective import Group, local_rank
from stream_learner.learning.sharded_trainer import ShardedTrainer
from stream_learner.metrics import CollectorRegistry, Metrics, MetricsServer
from stream_learner.runtime.distributed.coordinator import Coordinator, Output, Turn
from stream_learner.runtime.distributed.letters import LetterBox
from stream_learner.runtime.distributed.start import (
    check_partitions,
    check_settings,
    device_name,
    gather_offsets,
    restore_rank,
)
from stream_learner.runtime.distributed.status import LocalStatus
from stream_learner.runtime.intake import Intake, holds_input
from stream_learner.runtime.report import Reporter, Summary, start_metrics_at_zero
from stream_learner.snapshots import signing, warmstart
from stream_learner.snapshots.checkpoints import Checkpoints
from stream_learner.snapshots.publisher import Publisher
from stream_learner.snapshots.shards import ShardCopier

log = logging.getLogger(__name__)

#: How long rank 0 polls the lease between the start-up exchanges with the other ranks.
STANDBY_POLL = 0.5


@dataclass(frozen=True)
class _Parts:
    group: Group
    source: Source
    windower: JobWindower
    intake: Intake
    letters: LetterBox
    coordinator: Coordinator
    reporter: Reporter
    lease: Lease | None  # rank 0
    sink: Sink | None  # rank 0
    publisher: Publisher | None  # rank 0


class RankApp:
    """One rank of the learner as a distributed job."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_settings(settings)
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        start_metrics_at_zero(self.metrics, settings)
        self.clock = clock
        self.summary = Summary()
        self._stop = threading.Event()
        self._ready = False
        self._sink: Sink | None = None
        self._owned = False
        self._leaving: float | None = None
        self._beat = time.monotonic()
        self.metrics.active.set_function(lambda: 1.0 if self.ready() else 0.0)

    def request_stop(self) -> None:
        """Ask every rank to stop after the step in progress (safe from a signal handler)."""
        if self._leaving is None:
            self._leaving = time.monotonic()
        self._stop.set()

    @property
    def leaving_since(self) -> float | None:
        return self._leaving

    def run(self, exit_when_idle: bool = False) -> Summary:
        started = time.monotonic()
        try:
            with ExitStack() as stack:
                p = self._start(stack)
                if p is None:
                    return self.summary
                self._ready = True
                while True:
                    self._beat = time.monotonic()
                    if p.lease is not None and not p.lease.poll():
                        raise OwnershipLost(p.lease.why_not_owned())
                    p.windower.close_until(p.coordinator.close_ms)
                    windows = p.intake.step()
                    p.coordinator.submit(Turn(windows, p.letters.take(), self._status(p, exit_when_idle)))
                    p.intake.backpressure(p.coordinator, p.coordinator.pending_events)
                    if self._apply(p, p.coordinator.outputs()):
                        break
                    if p.sink is not None:
                        p.sink.poll()
                    p.reporter.report(None)
                self._ready = False
                p.reporter.report(None)
        except BaseException:
            self._ready = False
            if self._leaving is None:
                self._leaving = time.monotonic()
            raise
        self.summary.events_per_second = self.summary.events / max(1e-9, time.monotonic() - started)
        return self.summary

    def _status(self, p: _Parts, exit_when_idle: bool) -> LocalStatus:
        now = self.clock()
        w = p.windower
        open_lows = w.open_low_offsets()
        idle = w.all_idle(now)
        return LocalStatus(
            watermark_ms=w.local_watermark_ms(now),
            idle=idle,
            open_end_ms=w.newest_open_end_ms(),
            open_lows=open_lows,
            positions=dict(p.source.positions),
            closed_ms=w.close_ms,
            stop=self._stop.is_set(),
            done=exit_when_idle and idle and not open_lows,
        )

    def _apply(self, p: _Parts, outputs: list[Output]) -> bool:
        """What the training thread returned: results to the reporter (and the publisher), snapshots
        to the sink (rank 0). Returns whether the job stopped."""
        for out in outputs:
            if out.error is not None:
                raise out.error
            if out.result is not None:
                p.reporter.record(out.result)
                if p.publisher is not None:
                    p.publisher.trained(out.result)
            if out.publication is not None:
                assert p.publisher is not None and p.sink is not None
                pub = out.publication
                for letter in pub.letters:
                    p.sink.dead_letter(letter.value, letter.key, letter.headers)
                resume = {
                    "windowing": p.windower.state(p.publisher.window_end_ms),
                    "consumed": {str(k): v for k, v in sorted(pub.consumed.items())},
                }
                for version in p.publisher.publish(
                    pub.state, pub.frontier, resume, p.source.group_metadata()
                ):
                    p.reporter.snapshot_published(version)
            if out.stopped:
                return True
        return False

    def _remaining(self) -> float:
        budget = self.settings.delivery.shutdown_timeout_seconds
        if self._leaving is None:
            self._leaving = time.monotonic()
        return max(0.0, self._leaving + budget - time.monotonic())

    # -- start-up ------------------------------------------------------------------------------
    def _start(self, stack: ExitStack) -> _Parts | None:
        s = self.settings
        device = device_name(s)
        signer, verifier = signing.signer(s.snapshot), signing.verifier(s.snapshot)
        partitions = check_cluster(s)
        group = Group.join(device, s.distributed.timeout_seconds)
        stack.callback(group.leave)
        check_partitions(s, partitions, group.world, "input.topic")
        port = s.metrics.port + local_rank() if s.metrics.port else 0
        server = stack.enter_context(
            MetricsServer(self.registry, s.metrics.host, port, self.ready, self.healthy)
        )
        self.summary.metrics_url = server.url
        self.metrics.model_info.info({"model": s.model.name, "kind": s.model.kind, "version": __version__})
        source = Source(s, reads=lambda partition: partition % group.world == group.rank)
        stack.callback(source.close)
        lease = sink = None
        if group.rank == 0:
            ensure_topics(s)
            lease = Lease(s, on_change=self._ownership_changed)
            stack.callback(lease.close)
        if not self._all_ready(group, lease, source, stack):
            return None
        restored = restore_rank(s, group, device, verifier, self._refused)
        learner, windower = restored.learner, restored.windower
        self.summary.started_from(restored.version, restored.meta)
        assert isinstance(windower, JobWindower) and isinstance(learner.trainer, ShardedTrainer)
        warmstart.initialise(s, learner, restored)
        learner.trainer.broadcast_dense()
        if group.rank != 0:  # the job's count is the sum over the ranks: rank 0 carries what was restored
            learner.events_trained = 0
        starts = source.start(restored.resume)
        windower.assign(source.partitions, self.clock())
        every_start = gather_offsets(group, starts)
        letters = LetterBox(max_message_bytes(s, s.dead_letter.topic))
        reporter = Reporter(
            metrics=self.metrics, summary=self.summary, source=source, windower=windower, clock=self.clock
        )
        publisher = None
        if group.rank == 0:
            sink = self._sink
            assert sink is not None
            folder = s.snapshot.checkpoint_dir  # rank 0 keeps the copies; a rank restores from them
            publisher = Publisher(  # when its host holds the newest version, else from the topic
                settings=s,
                sink=sink,
                spec_json=learner.spec.to_json(),
                clock=self.clock,
                sign=signer,
                on_committed=reporter.snapshot_committed,
                version=restored.version,
                committed_next=every_start,
                checkpoint=Checkpoints(folder, s.model.name, verifier).write if folder else None,
                window_end_ms=restored.meta.window_end_ms if restored.meta else None,
                newest_event_ms=restored.meta.newest_event_ms if restored.meta else 0,
                restored=restored.meta,  # the gate's reference and the lineage's base go on from it
            )
        coordinator = Coordinator(
            settings=s,
            group=group,
            learner=learner,
            copier=ShardCopier(
                learner.trainer,
                s.snapshot.full_every,
                restored.since_full,
                dict(restored.layout),
                realtime=learner.features.realtime,
                delta_first=s.snapshot.full_every > 1,  # as the single process (delta-before-full.md)
            ),
            close_ms=windower.close_ms,
            committed=dict(starts),
            clock=self.clock,
        )
        coordinator.start()
        stack.callback(lambda: coordinator.close(min(self._remaining(), 30.0)))
        intake = Intake(
            settings=s,
            source=source,
            decoder=make_decoder(s, self.clock),
            windower=windower,
            dead_letters=letters,
            metrics=self.metrics,
            summary=self.summary,
            clock=self.clock,
            hold_for=coordinator
            if holds_input(s.window.hold_input_while_training, learner.trainer.device.type)
            else None,
        )
        log.info(
            "active: model %s v%d, rank %d of %d (pid %d), input %s partitions %s from %s",
            s.model.name, restored.version, group.rank, group.world, os.getpid(), source.topic,
            source.partitions, starts,
        )  # fmt: skip
        return _Parts(group, source, windower, intake, letters, coordinator, reporter, lease, sink, publisher)

    def _all_ready(self, group: Group, lease: Lease | None, source: Source, stack: ExitStack) -> bool:
        """Rank 0 takes the lease and registers the transactional producer (fencing any older
        instance) while the others wait; False when a stop was asked meanwhile."""
        waited = False
        while True:
            ready = True
            if lease is not None and self._sink is None:
                if lease.wait(self._poll_for(STANDBY_POLL), log_every=math.inf):
                    self._start_sink(source, stack)
                else:
                    ready = False
                    if not waited:
                        log.info("rank 0 waits for the lease of model %s", self.settings.model.name)
                        waited = True
            self._beat = time.monotonic()
            rows = group.gather_ints([int(ready), int(self._stop.is_set())])
            if rows[:, 1].max():
                return False
            if rows[:, 0].min():
                return True

    def _poll_for(self, seconds: float) -> Callable[[], bool]:
        """A ``should_stop`` for `Lease.wait`: after ``seconds``, or when a stop was asked."""
        until = time.monotonic() + seconds
        return lambda: time.monotonic() > until or self._stop.is_set()

    def _start_sink(self, source: Source, stack: ExitStack) -> None:
        """Rank 0's producer; it commits every rank's offsets (same group, any partition)."""
        s = self.settings
        sink = Sink(s, source.commit, max_message_bytes(s, s.dead_letter.topic))
        sink.start()
        stack.callback(lambda: sink.close(self._remaining()))
        self._sink = sink

    def ready(self) -> bool:
        """For /readyz and ``stream_learner_active``: this is rank 0 of a running job, owns the model
        and can commit. The other ranks say no, so that a job counts as one active instance."""
        sink = self._sink
        if sink is None:
            return False
        return self._ready and self._owned and sink.stalled_for() < self.settings.delivery.stall_seconds

    def healthy(self) -> bool:
        return time.monotonic() - self._beat < self.settings.metrics.stall_seconds

    def _ownership_changed(self, owned: bool) -> None:
        self._owned = owned
        self.metrics.rebalances.inc()

    def _refused(self, err: SnapshotError) -> None:
        self.metrics.snapshots_refused.labels(err.reason).inc()
