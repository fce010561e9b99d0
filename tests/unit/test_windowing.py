"""Windowing: event-time tumbling windows with watermarks, idleness, lateness and replays; count
windows; and properties over random interleavings of partitions, disorder and idle time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import CountWindower, EventTimeWindower, Window
from stream_learner.metrics import Metrics
from stream_learner.runtime.intake import Intake
from stream_learner.runtime.report import Summary

S = 1000  # ms


def batch(events: list[tuple[int, int, int]]) -> EventBatch:
    """Events as (timestamp_ms, partition, offset)."""
    n = len(events)
    ts, part, off = (np.array(col, np.int64) for col in zip(*events, strict=True)) if n else ([], [], [])
    return EventBatch(
        user=np.zeros(n, np.int64),
        item=np.zeros(n, np.int64),
        context=np.zeros((n, 0), np.int64),
        label=np.zeros(n, np.float32),
        timestamp_ms=np.asarray(ts, np.int64),
        partition=np.asarray(part, np.int32),
        offset=np.asarray(off, np.int64),
        item_ids=np.full(n, "i", dtype=object),
    )


def windower(partitions: int = 1, lateness_ms: int = 0, idle: float = 10.0) -> EventTimeWindower:
    w = EventTimeWindower(idle_timeout_s=idle, size_ms=60 * S, lateness_ms=lateness_ms)
    w.assign(list(range(partitions)), now=0.0)
    return w


def spans(windows: list[Window]) -> list[tuple[int, int]]:
    return [(w.start_ms, w.end_ms) for w in windows]


def test_windows_are_aligned_to_the_epoch_and_close_when_the_watermark_passes_their_end() -> None:
    w = windower()
    first = w.add(batch([(59_999, 0, 0), (60_000, 0, 1), (119_999, 0, 2)]), now=1).windows
    assert spans(first) == [(0, 60_000)] and len(first[0]) == 1  # watermark 119.999 s
    closed = w.add(batch([(120_000, 0, 3)]), now=2).windows  # watermark 120 s passes [60, 120)
    assert spans(closed) == [(60_000, 120_000)] and len(closed[0]) == 2
    assert closed[0].offsets == {0: (1, 2)} and closed[0].closed_by == "watermark"


def test_the_job_watermark_is_the_slowest_partition_minus_the_allowed_lateness() -> None:
    w = windower(partitions=2, lateness_ms=5 * S)
    assert w.add(batch([(10 * S, 0, 0), (130 * S, 0, 1)]), now=1).windows == []  # p1 has shown nothing
    assert w.add(batch([(64 * S, 1, 0)]), now=2).windows == []  # watermark 59 s
    assert w.watermark_ms(2) == 59 * S
    assert spans(w.add(batch([(65 * S, 1, 1)]), now=3).windows) == [(0, 60 * S)]


def test_late_events_are_counted_and_a_closed_window_is_never_reopened() -> None:
    w = windower()
    w.add(batch([(10 * S, 0, 0), (70 * S, 0, 1)]), now=1)  # closes [0, 60)
    result = w.add(batch([(20 * S, 0, 2), (80 * S, 0, 3), (59 * S, 0, 4)]), now=2)
    assert result.late.tolist() == [True, False, True] and result.replayed == 0
    later = w.add(batch([(200 * S, 0, 5)]), now=3).windows
    assert spans(later) == [(60 * S, 120 * S)] and later[0].offsets == {0: (1, 3)}
    assert all(x.start_ms != 0 for x in later)


def test_events_handled_before_a_restart_are_skipped_as_replays_not_counted_late() -> None:
    w = windower()
    w.restore({"horizon_ms": 60 * S}, replay_until={0: 10})
    result = w.add(batch([(5 * S, 0, 8), (6 * S, 0, 12), (61 * S, 0, 9)]), now=1)
    assert result.replayed == 1 and result.late.tolist() == [False, True, False]
    assert w.replayed(0, 9) and not w.replayed(0, 10) and not w.replayed(1, 0)
    assert w.open_low_offsets() == {0: 9}


def test_an_idle_partition_at_its_end_stops_holding_the_others_back() -> None:
    w = windower(partitions=2, idle=10.0)
    w.mark_at_end(1)
    w.add(batch([(10 * S, 0, 0), (130 * S, 0, 1)]), now=5)
    assert w.add(batch([]), now=9.9).windows == []  # partition 1 quiet for 9.9 s: still waited for
    assert spans(w.add(batch([]), now=10.0).windows) == [(0, 60 * S)]  # idle from 10 s after assign


def test_a_lagging_partition_holds_the_watermark_however_long_it_is_quiet() -> None:
    w = windower(partitions=2, idle=1.0)
    w.add(batch([(10 * S, 0, 0), (130 * S, 0, 1)]), now=1)
    assert w.add(batch([]), now=1000).windows == []  # partition 1 never reached its end
    assert w.watermark_ms(1000) is not None and w.watermark_ms(1000) < 0


def test_a_paused_partition_is_never_idle_until_the_source_reports_its_end_again() -> None:
    w = windower(partitions=1, idle=1.0)
    w.add(batch([(10 * S, 0, 0)]), now=1)
    w.mark_at_end(0)
    w.mark_paused()
    assert w.add(batch([]), now=100).windows == [] and not w.all_idle(100)
    w.mark_at_end(0)  # resumed and still at the end
    closed = w.add(batch([]), now=101).windows
    assert spans(closed) == [(0, 60 * S)] and closed[0].closed_by == "idle"


def test_when_the_whole_input_is_idle_open_windows_close_on_the_wall_clock_in_order() -> None:
    w = windower(partitions=2, idle=2.0)
    w.add(batch([(130 * S, 0, 0), (10 * S, 1, 0), (50 * S, 1, 1)]), now=1)  # watermark 50 s
    w.mark_at_end(0)
    w.mark_at_end(1)
    assert w.add(batch([]), now=2.9).windows == []
    closed = w.add(batch([]), now=3.0).windows
    assert spans(closed) == [(0, 60 * S), (120 * S, 180 * S)] and [len(x) for x in closed] == [2, 1]
    assert {x.closed_by for x in closed} == {"idle"}
    assert w.add(batch([(1 * S, 0, 1)]), now=4).late.tolist() == [True]
    assert w.open_low_offsets() == {}


def test_open_low_offsets_follow_the_open_windows() -> None:
    w = windower(partitions=2)
    w.add(batch([(10 * S, 0, 5), (70 * S, 0, 6), (15 * S, 1, 3)]), now=1)
    assert w.open_low_offsets() == {0: 5, 1: 3}
    w.add(batch([(75 * S, 1, 4)]), now=2)  # closes [0, 60)
    assert w.open_low_offsets() == {0: 6, 1: 4}
    assert [len(x) for x in w.flush()] == [2] and w.open_low_offsets() == {}


def test_count_windows_take_every_n_events_in_consume_order() -> None:
    w = CountWindower(idle_timeout_s=1.0, count=3)
    w.assign([0, 1], now=0)
    result = w.add(batch([(5, 0, 0), (1, 1, 0), (9, 0, 1), (2, 1, 1)]), now=1)
    assert [x.offsets for x in result.windows] == [{0: (0, 1), 1: (0, 0)}]
    assert w.open_low_offsets() == {1: 1}
    w.mark_at_end(0)
    w.mark_at_end(1)
    closed = w.add(batch([]), now=2.5).windows
    assert [(x.closed_by, len(x)) for x in closed] == [("idle", 1)] and w.open_low_offsets() == {}


# -- properties over random streams -----------------------------------------------------------------
@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, int]], int]:
    """Partitions, then steps: ("events", partition, count), ("end", partition, 0), ("wait", 0, ms)."""
    partitions = draw(st.integers(1, 3))
    step = st.one_of(
        st.tuples(st.just("events"), st.integers(0, partitions - 1), st.integers(1, 20)),
        st.tuples(st.just("end"), st.integers(0, partitions - 1), st.just(0)),
        st.tuples(st.just("wait"), st.just(0), st.integers(0, 5000)),
    )
    return partitions, draw(st.lists(step, max_size=40)), draw(st.integers(0, 2**31))


@settings(max_examples=300, deadline=None)
@given(streams(), st.integers(0, 3000), st.booleans())
def test_every_event_is_in_exactly_one_window_or_late_and_windows_come_once_in_order(
    stream: tuple[int, list[tuple[str, int, int]], int], lateness_ms: int, flush: bool
) -> None:
    partitions, steps, seed = stream
    rng = np.random.default_rng(seed)
    w = EventTimeWindower(idle_timeout_s=1.0, size_ms=1000, lateness_ms=lateness_ms)
    w.assign(list(range(partitions)), now=0.0)
    now, clock_ms = 0.0, {p: 0 for p in range(partitions)}
    offsets = dict.fromkeys(range(partitions), 0)
    seen: set[tuple[int, int]] = set()
    late: set[tuple[int, int]] = set()
    emitted: list[Window] = []
    for kind, p, n in steps:
        if kind == "wait":
            now += n / 1000
            emitted += w.tick(now)
            continue
        if kind == "end":
            w.mark_at_end(p)
            continue
        # Event times move forward per partition, with disorder up to 3 s back.
        times = clock_ms[p] + np.cumsum(rng.integers(0, 400, n)) - rng.integers(0, 3000, n)
        clock_ms[p] = int(times.max()) + 1
        events = [(max(0, int(t)), p, offsets[p] + i) for i, t in enumerate(times)]
        offsets[p] += n
        result = w.add(batch(events), now)
        assert result.replayed == 0
        late |= {(e[1], e[2]) for e, is_late in zip(events, result.late, strict=True) if is_late}
        seen |= {(e[1], e[2]) for e in events}
        emitted += result.windows
    if flush:
        emitted += w.flush()
    in_windows = [
        (int(p), int(o)) for x in emitted for p, o in zip(x.events.partition, x.events.offset, strict=True)
    ]
    held = {
        (int(p), int(o))
        for parts in w._open.values()
        for b in parts
        for p, o in zip(b.partition, b.offset, strict=True)
    }
    # Exactly once: in one window, or late, or (without a flush) still in an open window.
    assert len(in_windows) == len(set(in_windows))
    assert set(in_windows).isdisjoint(late) and set(in_windows).isdisjoint(held) and late.isdisjoint(held)
    assert set(in_windows) | late | held == seen
    if flush:
        assert not held
    # Never twice, in order of start, and each window holds exactly its own time span.
    starts = [x.start_ms for x in emitted]
    assert starts == sorted(set(starts))
    for x in emitted:
        assert ((x.events.timestamp_ms >= x.start_ms) & (x.events.timestamp_ms < x.end_ms)).all()
        assert x.start_ms % 1000 == 0 and x.end_ms == x.start_ms + 1000
        for p, (lo, hi) in x.offsets.items():
            offs = x.events.offset[x.events.partition == p]
            assert (lo, hi) == (offs.min(), offs.max())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 30)), max_size=30), st.integers(1, 25))
def test_count_windows_hold_every_event_exactly_once_in_consume_order(
    deliveries: list[tuple[int, int]], count: int
) -> None:
    w = CountWindower(idle_timeout_s=1.0, count=count)
    w.assign([0, 1, 2], now=0)
    offsets, order, windows = [0, 0, 0], [], []
    for p, n in deliveries:
        events = [(1, p, offsets[p] + i) for i in range(n)]
        offsets[p] += n
        order += [(e[1], e[2]) for e in events]
        windows += w.add(batch(events), now=0).windows
    windows += w.flush()
    got = [
        (int(p), int(o)) for x in windows for p, o in zip(x.events.partition, x.events.offset, strict=True)
    ]
    assert got == order
    assert all(len(x) == count for x in windows[:-1])


# -- backpressure keeps paused partitions from counting as idle --------------------------------------
class _Source:
    topic = "events"

    def __init__(self) -> None:
        self.partitions = [0]
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class _Training:
    """Windows waiting for training; waiting for room returns at once (nothing trains here)."""

    def __init__(self, queued: int) -> None:
        self.queued = queued
        self.waited: list[tuple[int, float]] = []

    def wait_for_room(self, bound: int, timeout: float) -> bool:
        self.waited.append((bound, timeout))
        return self.queued < bound


def _intake(
    settings_: Settings,
    source: _Source,
    w: EventTimeWindower,
    registry: CollectorRegistry,
    hold_for: _Training | None = None,
) -> Intake:
    """An Intake for backpressure alone: no decoder, no dead letters."""
    return Intake(
        settings=settings_,
        source=source,
        decoder=None,
        windower=w,
        dead_letters=None,
        metrics=Metrics(registry),
        summary=Summary(),
        clock=lambda: 0.0,
        hold_for=hold_for,
    )  # type: ignore[arg-type]


def test_backpressure_pauses_the_input_and_paused_partitions_never_close_windows_on_the_wall_clock() -> None:
    settings_ = Settings.model_validate({"window": {"max_queued": 2, "idle_timeout_seconds": 1.0}})
    w = windower(partitions=1, idle=1.0)
    registry = CollectorRegistry()
    intake = _intake(settings_, _Source(), w, registry)
    w.add(batch([(10 * S, 0, 0)]), now=1)
    w.mark_at_end(0)
    training = _Training(queued=2)
    intake.backpressure(training)
    assert intake.source.paused and registry.get_sample_value("stream_learner_paused_partitions") == 1
    assert training.waited == [(2, settings_.input.poll_timeout_seconds)]  # waited for room, bounded
    assert w.add(batch([]), now=1000).windows == []  # held back for long: the window stays open
    training.queued = 1
    intake.backpressure(training)  # room for one more window: the input resumes at once
    assert not intake.source.paused and registry.get_sample_value("stream_learner_paused_partitions") == 0
    assert len(training.waited) == 1  # no wait with room
    # the partition was at its end when held back and shows nothing new: idle again, the window closes
    assert spans(w.add(batch([]), now=1001).windows) == [(0, 60 * S)]


class _Busy(_Training):
    """A window in training; waiting for the worker to be idle returns at once, still busy."""

    def __init__(self) -> None:
        super().__init__(queued=0)
        self.busy = True
        self.waited_idle: list[float] = []

    def wait_idle(self, timeout: float) -> bool:
        self.waited_idle.append(timeout)
        return not self.busy


@pytest.mark.parametrize("hold", [True, False])
def test_the_input_is_held_while_a_window_trains_unless_more_than_it_waits(hold: bool) -> None:
    settings_ = Settings.model_validate({"window": {"max_queued": 2}})
    source, registry = _Source(), CollectorRegistry()
    source.lag = lambda: {0: lag}  # type: ignore[attr-defined]
    w = windower(partitions=1, idle=1.0)
    training, lag = _Busy(), 100
    intake = _intake(settings_, source, w, registry, hold_for=training if hold else None)
    intake.backpressure(training, training_events=5000)  # live: less waits than the window holds
    assert source.paused is hold
    assert training.waited_idle == ([settings_.input.poll_timeout_seconds] if hold else [])
    assert registry.get_sample_value("stream_learner_paused_partitions") == 0  # not "cannot keep up"
    training.busy = False
    intake.backpressure(training, training_events=0)  # trained: the input reads again
    assert not source.paused
    training.busy, lag = True, 50_000  # far behind: throughput first, reading goes on
    intake.backpressure(training, training_events=5000)
    assert not source.paused and len(training.waited_idle) == (1 if hold else 0)
