"""Catch-up mode: entered on lag in records or event time, left with hysteresis, the knobs it turns,
and its ETA (a fake lag and clock)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from stream_learner.config import CatchupSettings
from stream_learner.learning.learner import Learner
from stream_learner.metrics import Metrics
from stream_learner.runtime.catchup import CatchUp
from stream_learner.runtime.commits import Commits
from stream_learner.runtime.worker import Worker
from stream_learner.snapshots.state import StateCopier
from tests.learning_support import small_settings, windows

SETTINGS = CatchupSettings(
    enabled=True,
    enter_records=10_000,
    enter_seconds=300,
    exit_records=1_000,
    exit_seconds=60,
    batch_multiplier=4,
    snapshot_factor=5,
)


@dataclass
class Input:
    records: int = 0
    newest_ms: int | None = None
    topic: str = "in"

    def lag(self) -> dict[int, int]:
        return {0: self.records // 2, 1: self.records - self.records // 2}

    def newest_event_ms(self) -> int | None:
        return self.newest_ms


@dataclass
class Knobs:
    batch_multiplier: int = 1
    snapshot_factor: int = 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _catchup(settings: CatchupSettings = SETTINGS) -> tuple[CatchUp, Input, Knobs, Clock, CollectorRegistry]:
    source, knobs, clock, registry = Input(), Knobs(), Clock(), CollectorRegistry()
    catchup = CatchUp(
        settings=settings, source=source, windower=source, knobs=knobs, metrics=Metrics(registry), clock=clock
    )
    return catchup, source, knobs, clock, registry


def _at(catchup: CatchUp, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    catchup.step()


def test_lag_in_records_starts_catch_up_and_it_ends_only_below_the_exit_thresholds():
    catchup, source, knobs, clock, registry = _catchup()
    source.newest_ms = int(clock.now * 1000)
    source.records = 9_000
    _at(catchup, clock, 1)
    assert (catchup.catching_up, knobs.batch_multiplier, knobs.snapshot_factor) == (False, 1, 1)
    source.records = 50_000
    _at(catchup, clock, 1)
    assert (catchup.catching_up, knobs.batch_multiplier, knobs.snapshot_factor) == (True, 4, 5)
    assert registry.get_sample_value("stream_learner_catchup_mode") == 1
    source.records = 5_000  # below the entry threshold, above the exit one: stays
    source.newest_ms = int(clock.now * 1000)
    _at(catchup, clock, 1)
    assert catchup.catching_up
    source.records = 800
    source.newest_ms = int((clock.now - 120) * 1000)  # but two minutes behind in event time: stays
    _at(catchup, clock, 1)
    assert catchup.catching_up
    source.newest_ms = int(clock.now * 1000)
    _at(catchup, clock, 1)
    assert (catchup.catching_up, knobs.batch_multiplier, knobs.snapshot_factor) == (False, 1, 1)
    assert registry.get_sample_value("stream_learner_catchup_mode") == 0
    assert registry.get_sample_value("stream_learner_catchup_eta_seconds") == 0


def test_event_time_lag_counts_only_while_records_wait():
    catchup, source, _, clock, _ = _catchup()
    source.newest_ms = int((clock.now - 3600) * 1000)  # the topic has been quiet for an hour
    _at(catchup, clock, 1)
    assert not catchup.catching_up
    source.records = 500  # an hour behind, with events waiting
    _at(catchup, clock, 1)
    assert catchup.catching_up


def test_the_eta_follows_the_rate_at_which_the_lag_shrinks():
    catchup, source, _, clock, registry = _catchup()
    source.newest_ms = int(clock.now * 1000)
    source.records = 101_000
    _at(catchup, clock, 1)
    assert registry.get_sample_value("stream_learner_catchup_eta_seconds") == math.inf  # not shrinking yet
    for _ in range(100):  # drains 1000 records a second
        source.records -= 1000
        _at(catchup, clock, 1)
    eta = registry.get_sample_value("stream_learner_catchup_eta_seconds")
    assert catchup.drain > 990
    assert eta is not None and abs(eta - (source.records - 1_000) / catchup.drain) < 1e-6


def test_checks_at_most_once_a_second_and_never_when_disabled():
    catchup, source, knobs, clock, _ = _catchup()
    source.records = 50_000
    _at(catchup, clock, 1)
    source.records = 0
    _at(catchup, clock, 0.5)
    assert catchup.catching_up  # too soon to look again
    off, source, knobs, clock, registry = _catchup(SETTINGS.model_copy(update={"enabled": False}))
    source.records = 10**9
    _at(off, clock, 5)
    assert not off.catching_up and knobs.batch_multiplier == 1
    assert registry.get_sample_value("stream_learner_catchup_mode") == 0


def test_the_worker_trains_each_window_with_the_multiplier_it_was_submitted_with():
    """The one knob in learning: the trainer's mini-batches are their ordinary size x the multiplier
    of the window in training, and the output says which (the lineage records it for replay)."""
    learner = Learner(small_settings())  # batch_size 256
    with Worker(learner, StateCopier(learner)) as worker:
        first, second = windows(2, size=2048)
        worker.submit(first, snapshot=False, batch_multiplier=4)
        worker.submit(second, snapshot=False)
        outputs = []
        while len(outputs) < 2:
            outputs += worker.outputs(timeout=30)
    steps = [o.result.step.steps for o in outputs if o.result is not None and o.result.step is not None]
    assert steps == [4, 16]  # 2048 events in train.window_steps (16) mini-batches of 128, x4: of 512
    assert [o.batch_multiplier for o in outputs] == [4, 1]


class _Submitted:
    def __init__(self) -> None:
        self.jobs: list[tuple[bool, int]] = []

    def submit(self, window: object, snapshot: bool, batch_multiplier: int = 1) -> None:
        self.jobs.append((snapshot, batch_multiplier))


def test_commits_snapshot_less_often_and_pass_the_multiplier_on_while_catching_up():
    worker = _Submitted()
    commits = Commits(
        settings=small_settings(snapshot={"every_windows": 2}),
        worker=worker,  # type: ignore[arg-type]
        publisher=None,  # type: ignore[arg-type]
        windower=None,  # type: ignore[arg-type]
        source=None,  # type: ignore[arg-type]
        reporter=None,  # type: ignore[arg-type]
        clock=Clock(),
    )
    commits.submit(list(windows(4, size=10)))
    commits.batch_multiplier, commits.snapshot_factor = 8, 3
    commits.submit(list(windows(6, size=10)))
    assert worker.jobs == [(False, 1), (True, 1), (False, 1), (True, 1)] + [(False, 8)] * 5 + [(True, 8)]
