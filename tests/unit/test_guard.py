"""The loss-spike guard counts events: a small window's high loss is noise, a large one's is a spike;
refused windows are counted with their events."""

from __future__ import annotations

import json
import math

import numpy as np

from stream_learner.config import GuardSettings
from stream_learner.learning.guard import LossGuard
from stream_learner.learning.learner import Learner, WindowResult
from stream_learner.learning.rates import LRUpdate
from stream_learner.learning.trainer import Evaluation
from stream_learner.metrics import Metrics
from stream_learner.runtime.report import Reporter, Summary
from tests.learning_support import small_settings, windows

VARIANCE = 0.36  # one event's log loss varies by about 0.6 nats


def settled(**settings: object) -> LossGuard:
    guard = LossGuard(GuardSettings(**settings))
    for loss in (0.62, 0.6, 0.58, 0.6, 0.61):
        assert guard.check(loss, 10_000, VARIANCE) is None
    return guard


def test_a_small_windows_high_loss_is_not_a_spike_where_a_large_ones_is() -> None:
    small, large = settled(), settled()
    assert small.check(3.5, 13, VARIANCE) is None  # under guard.min_events: never a spike
    assert large.check(3.5, 10_000, VARIANCE) == "loss_spike"
    assert large.check(0.6, 10_000, VARIANCE) is None  # the spike did not move the average
    assert abs(large.average - 0.6) < 0.01


def test_a_spike_must_also_be_significant_for_the_events_it_holds() -> None:
    guard = settled(min_events=1)
    assert guard.is_spike(3.5, 2)  # 2.9 nats above the average, 6.8 standard errors
    assert not guard.is_spike(3.2, 1)  # above 5x the average, but 4.3 standard errors of one event
    assert not guard.is_spike(2.9, 10_000)  # significant, but under 5x the average


def test_after_max_consecutive_skips_the_next_spike_is_accepted_and_the_average_starts_over() -> None:
    guard = settled(max_consecutive_skips=2)
    assert [guard.check(4.0, 5_000, VARIANCE) for _ in range(3)] == ["loss_spike", "loss_spike", None]
    assert guard.average == 4.0 and guard.windows == 1
    assert guard.check(math.nan, 5_000) == "non_finite"


def test_the_guard_state_round_trips_through_json() -> None:
    a = settled()
    a.check(3.5, 10_000, VARIANCE)
    b = LossGuard(GuardSettings())
    b.restore(json.loads(json.dumps(a.state())))
    assert b.state() == a.state()
    assert [b.check(x, 10_000, VARIANCE) for x in (3.6, 0.7)] == [
        a.check(x, 10_000, VARIANCE) for x in (3.6, 0.7)
    ]


def test_windows_of_a_few_events_are_never_refused_on_a_stationary_stream() -> None:
    learner = Learner(small_settings())
    sizes = np.random.default_rng(0).integers(1, 40, 300)
    for w, size in zip(windows(300, size=40), sizes, strict=True):
        cut = w.events.take(slice(0, int(size)))
        result = learner.process(type(w)(w.start_ms, w.end_ms, cut, w.offsets, "count"))
        assert result.skipped is None and result.step is not None


def test_a_refused_window_is_counted_with_its_events_in_the_metrics() -> None:
    from prometheus_client import CollectorRegistry

    metrics, summary = Metrics(CollectorRegistry()), Summary()
    reporter = Reporter(metrics=metrics, summary=summary, source=None, windower=None, clock=lambda: 0.0)  # type: ignore[arg-type]
    result = WindowResult(0, 1000, 1234, 999, Evaluation(4.0, 0.5, 1234), LRUpdate(0.1), None, "loss_spike")
    reporter.record(result)
    registry = metrics.registry
    assert registry.get_sample_value("stream_learner_events_skipped_total", {"reason": "loss_spike"}) == 1234
    assert registry.get_sample_value("stream_learner_windows_skipped_total", {"reason": "loss_spike"}) == 1
    assert summary.events_skipped == 1234 and summary.windows_skipped == 1
