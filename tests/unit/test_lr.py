"""Learning-rate controllers: constant, plateau decay, drift boost and return (Page-Hinkley, ADWIN),
bounds, reasons, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.config import LRSettings
from stream_learner.learning.detectors import Adwin, PageHinkley
from stream_learner.learning.rates import ConstantLR, DriftLR, PlateauLR, make_controller

#: Windows of the tests hold this many events; one event's log loss varies by EVENT_VARIANCE (0.6^2)
#: about the mean, so the noise of a window's mean is WINDOW_NOISE (0.6 / sqrt(events)).
EVENTS = 10_000
EVENT_VARIANCE = 0.36
WINDOW_NOISE = 0.006


def noisy(level: float, n: int, seed: int = 0, sigma: float = 0.005) -> list[float]:
    return list(level + np.random.default_rng(seed).normal(0, sigma, n))


def learning_curve(n: int, seed: int = 0) -> list[float]:
    """A prequential loss as a model learns: falling fast, then slowly, with window noise."""
    t = np.arange(n)
    return list(0.45 + 0.2 * np.exp(-t / 3) + 0.04 * np.exp(-t / 40) + noisy(0.0, n, seed, WINDOW_NOISE))


def test_constant_never_changes() -> None:
    c = ConstantLR(LRSettings(policy="constant", initial=0.3, max=0.5))
    assert {c.update(x).lr for x in [0.5, 5.0, 0.1, float("nan")]} == {0.3}


def test_plateau_decays_after_patience_and_stops_at_min() -> None:
    c = PlateauLR(LRSettings(policy="plateau", initial=0.2, min=0.06, factor=0.5, patience=2))
    updates = [c.update(x) for x in [0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]
    assert [u.lr for u in updates] == [0.2, 0.2, 0.2, 0.1, 0.1, 0.06, 0.06, 0.06]
    assert updates[3].reason and "plateau" in updates[3].reason and "0.2 -> 0.1" in updates[3].reason
    assert all(u.reason is None for i, u in enumerate(updates) if i not in (3, 5))
    assert c.update(0.4).lr == 0.06  # improvement keeps the rate; it never goes below min


def windows_of(ph: PageHinkley, losses: list[float], events: int = EVENTS) -> list[bool]:
    """Whether Page-Hinkley fires on each of windows of ``events`` events with these mean losses."""
    return [ph.update(x, events, EVENT_VARIANCE) for x in losses]


def test_page_hinkley_ignores_noise_and_a_falling_loss_but_fires_on_a_rise() -> None:
    ph = PageHinkley(delta=0.02, threshold=20.0)
    falling = [0.7 - 0.01 * i for i in range(20)]
    assert not any(windows_of(ph, falling + noisy(0.5, 40, sigma=WINDOW_NOISE)))
    assert windows_of(ph, [0.56]) == [True]  # a jump of 0.06 (ten times the window noise) fires at once


def test_page_hinkley_fires_within_a_few_windows_of_a_gradual_rise() -> None:
    ph = PageHinkley(delta=0.02, threshold=20.0)
    assert not any(windows_of(ph, noisy(0.5, 30, sigma=WINDOW_NOISE)))
    rising = windows_of(
        ph, list(np.array(noisy(0.5, 6, seed=1, sigma=WINDOW_NOISE)) + 0.01 * np.arange(1, 7))
    )
    assert any(rising[:4]), "a rise of 0.01 per window not seen within 4 windows"


def test_page_hinkley_weighs_a_window_by_its_events() -> None:
    settled = noisy(0.5, 20, sigma=WINDOW_NOISE)
    small, large = PageHinkley(0.02, 20.0), PageHinkley(0.02, 20.0)
    windows_of(small, settled)
    windows_of(large, settled)
    assert not small.update(1.5, 13, EVENT_VARIANCE)  # three times the loss, over 13 events: noise
    assert large.update(0.6, 10_000, EVENT_VARIANCE)  # a fifth more, over 10 000 events: a change
    assert not small.update(0.6, 13, EVENT_VARIANCE)  # the same mean over 13 events is not


def bernoulli_windows(sizes: np.ndarray, p: float, q: float, seed: int) -> list[tuple[float, int, float]]:
    """(mean log loss, events, variance) of windows of events whose label is 1 with probability ``q``,
    scored by a model that says ``p``."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        y = rng.random(n) < q
        loss = np.where(y, -np.log(p), -np.log1p(-p))
        out.append((float(loss.mean()), int(n), float(loss.var())))
    return out


def test_page_hinkley_raises_no_alarm_on_many_small_windows_of_a_stationary_stream() -> None:
    sizes = np.random.default_rng(0).integers(1, 60, 5_000)  # 150 000 events, windows of 1 to 59
    ph = PageHinkley(0.02, 20.0)
    assert not any(ph.update(*w) for w in bernoulli_windows(sizes, 0.7, 0.7, seed=1))


def test_page_hinkley_adds_up_the_evidence_of_small_windows() -> None:
    sizes = np.random.default_rng(2).integers(1, 60, 3_000)
    ph = PageHinkley(0.02, 20.0)
    assert not any(ph.update(*w) for w in bernoulli_windows(sizes[:2_000], 0.7, 0.7, seed=3))
    # the stream changes (positives 60% where the model says 70%): the loss rises by 7%
    fired = [ph.update(*w) for w in bernoulli_windows(sizes[2_000:], 0.7, 0.6, seed=4)]
    assert any(fired), "a lasting rise over 30 000 events in small windows never fired"
    assert fired.index(True) > 10, "one small window alone fired"


def test_page_hinkley_state_round_trips() -> None:
    a, b = PageHinkley(0.02, 20.0), PageHinkley(0.02, 20.0)
    windows_of(a, learning_curve(20))
    b.restore(json.loads(json.dumps(a.state())))
    assert windows_of(a, noisy(0.6, 3, seed=9)) == windows_of(b, noisy(0.6, 3, seed=9))
    assert a.state() == b.state()


def test_adwin_fires_on_a_rise_only() -> None:
    a = Adwin(delta=0.002)
    assert not any(a.update(x) for x in noisy(0.5, 30))
    assert not any(a.update(x) for x in noisy(0.1, 30, seed=1))  # a drop is learning, not drift
    assert len(a.values) < 60  # but it is a change: the older values were dropped
    a.reset()
    assert not any(a.update(x) for x in noisy(0.5, 40, seed=2))
    fired = [a.update(x) for x in noisy(0.6, 5, seed=3)]
    assert any(fired[:2]), "no alarm within two windows of a rise of 0.1 (20 times the noise)"


def test_adwin_is_not_fooled_by_a_learning_curve_before_a_change() -> None:
    a = Adwin(delta=0.002)  # the early, high losses must not widen the bound
    assert not any(a.update(x) for x in learning_curve(40))
    assert any(a.update(x) for x in noisy(0.5, 3, seed=4, sigma=WINDOW_NOISE))


def test_adwin_sees_a_rise_of_a_few_times_the_noise_within_three_windows() -> None:
    seen = 0
    for seed in range(40):
        a = Adwin(delta=0.002)
        for x in noisy(0.47, 40, seed, WINDOW_NOISE):
            a.update(x)
        seen += any(a.update(x) for x in noisy(0.49, 3, 100 + seed, WINDOW_NOISE))
    assert seen >= 30, f"a rise of 0.02 (3.3 times the noise) seen in only {seen} of 40 runs"


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin"])
def test_no_false_alarm_on_a_long_stationary_stream(detector: str) -> None:
    c = make_controller(LRSettings(policy="drift", detector=detector))
    losses = learning_curve(40) + noisy(0.47, 300, seed=5, sigma=WINDOW_NOISE)
    updates = [c.update(x, EVENTS, EVENT_VARIANCE) for x in losses]
    assert not any(u.drift for u in updates)
    assert {u.lr for u in updates} == {LRSettings().initial}


def test_drift_jumps_to_max_says_why_and_returns_to_the_settled_rate() -> None:
    s = LRSettings(policy="drift", initial=0.2, min=0.1, max=0.8, patience=50, drift_decay=0.6)
    c = DriftLR(s)
    before = [c.update(x, EVENTS, EVENT_VARIANCE) for x in learning_curve(30)]
    assert {u.lr for u in before} == {0.2} and not any(u.drift or u.reason for u in before)
    up = c.update(0.6, EVENTS, EVENT_VARIANCE)  # the loss jumps by far more than the noise
    assert up.drift and up.lr == 0.8
    assert up.reason and "drift detected by page_hinkley" in up.reason and "0.2 -> 0.8" in up.reason
    after = [
        c.update(x, EVENTS, EVENT_VARIANCE) for x in learning_curve(10, seed=1)
    ]  # the model learns the new stream
    assert [u.lr for u in after] == pytest.approx([0.48, 0.288, 0.2] + [0.2] * 7)  # never below 0.2
    assert not any(u.drift for u in after)
    assert all(u.reason and "recovering from drift" in u.reason for u in after[:2])
    assert after[2].reason and "drift recovery over" in after[2].reason
    assert all(u.reason is None for u in after[3:])


def test_a_drift_during_the_recovery_returns_to_the_first_settled_rate() -> None:
    s = LRSettings(policy="drift", initial=0.2, min=0.1, max=0.8, patience=50, drift_decay=0.5)
    c = DriftLR(s)
    for x in learning_curve(30):
        c.update(x, EVENTS, EVENT_VARIANCE)
    assert c.update(0.6, EVENTS, EVENT_VARIANCE).drift
    assert c.update(0.55, EVENTS, EVENT_VARIANCE).lr == 0.4
    again = c.update(0.75, EVENTS, EVENT_VARIANCE)
    assert again.drift and again.lr == 0.8 and "returning to 0.2" in (again.reason or "")
    assert [c.update(x, EVENTS, EVENT_VARIANCE).lr for x in (0.7, 0.65, 0.6)] == [0.4, 0.2, 0.2]


def test_plateau_decay_resumes_after_the_recovery() -> None:
    s = LRSettings(policy="drift", initial=0.2, min=0.05, max=0.4, patience=3, drift_decay=0.5)
    c = DriftLR(s)
    assert [c.update(0.65 - 0.005 * i, EVENTS, EVENT_VARIANCE).lr for i in range(30)] == [
        0.2
    ] * 30  # always improving
    assert c.update(0.7, EVENTS, EVENT_VARIANCE).drift
    rates = [c.update(0.6, EVENTS, EVENT_VARIANCE).lr for _ in range(8)]  # recovered, then flat: a plateau
    assert rates[:2] == [0.2, 0.2] and rates[-1] < 0.2 and min(rates) >= 0.05


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin"])
def test_drift_state_round_trips_through_json_mid_recovery(detector: str) -> None:
    s = LRSettings(policy="drift", detector=detector, max=0.8, drift_decay=0.7)
    a, b = make_controller(s), make_controller(s)
    losses = [*learning_curve(30), 0.7, 0.68, *learning_curve(10, seed=2)]
    for x in losses[:32]:
        a.update(x, EVENTS, EVENT_VARIANCE)
    assert a.lr > s.initial  # restored while recovering
    b.restore(json.loads(json.dumps(a.state())))
    assert [a.update(x, EVENTS, EVENT_VARIANCE) for x in losses[32:]] == [
        b.update(x, EVENTS, EVENT_VARIANCE) for x in losses[32:]
    ]


def test_restore_keeps_the_rate_within_the_bounds() -> None:
    c = make_controller(LRSettings(policy="drift", initial=0.2, min=0.1, max=0.4))
    c.restore({"lr": 3.0, "settled": 0.01, "detector": {}})
    assert c.lr == 0.4
    assert [c.update(0.5).lr for _ in range(3)] == [0.2, 0.1, 0.1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 20.0), max_size=60),
    st.sampled_from(["constant", "plateau", "drift"]),
    st.sampled_from(["page_hinkley", "adwin"]),
)
def test_the_rate_stays_within_bounds_and_every_change_has_a_reason(
    losses: list[float], policy: str, detector: str
) -> None:
    s = LRSettings(policy=policy, detector=detector, initial=0.2, min=0.05, max=0.4, patience=1)
    c = make_controller(s)
    previous = c.lr
    for x in losses:
        u = c.update(x)
        assert 0.05 <= u.lr <= 0.4 and u.lr == c.lr
        assert (u.reason is not None) == (u.lr != previous) or u.drift
        previous = u.lr
