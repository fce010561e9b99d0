"""Per-id features as of each event (`stream_learner.learning.realtime`) against a reference that
computes every input event by event from the definition, window by window and at serving."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_learner.learning.realtime import SUMS, Formula, RealtimeFeatures, Stream

USERS, ITEMS = 7, 5


def reference(events: Stream, formula: Formula) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and surprise of every event from the definition: sums over every event of an earlier
    time (labelled ones: earlier than time - delay, decayed to that time)."""
    d, tau, f = formula.delay_ms, formula.recent_ms, formula
    n = len(events)
    surprise = np.zeros(n)
    inputs = np.zeros((n, 7))
    for e in sorted(range(n), key=lambda k: events.time_ms[k]):
        t = events.time_ms[e]
        labelled = [k for k in range(n) if events.time_ms[k] < t - d]
        lab_g = len(labelled)
        g = sum(events.label[k] for k in labelled) / lab_g if lab_g else 0.5
        g = min(max(g, formula.rate_clip), 1 - formula.rate_clip)
        rates, feats = [], []
        for i in range(2):
            mine = [k for k in labelled if events.rows[k, i] == events.rows[e, i]]
            lab = len(mine)
            pos = sum(events.label[k] for k in mine)
            rate = min(max((pos + f.prior * g) / (lab + f.prior), f.rate_clip), 1 - f.rate_clip)
            rates.append(rate)
            seen = sum(
                1 for k in range(n) if events.time_ms[k] < t and events.rows[k, i] == events.rows[e, i]
            )
            sur = sum(surprise[k] for k in mine)
            weight = sum(math.exp(-(t - d - events.time_ms[k]) / tau) for k in mine)
            recent = sum(surprise[k] * math.exp(-(t - d - events.time_ms[k]) / tau) for k in mine)
            feats.append(
                [
                    math.log(rate / (1 - rate)),
                    math.log1p(seen) / f.activity_scale,
                    sur / (lab + f.prior) * f.surprise_scale,
                    recent / (weight + f.recent_prior) * f.surprise_scale,
                ]
            )
        z = sum(math.log(r / (1 - r)) for r in rates) - math.log(g / (1 - g))
        surprise[e] = events.label[e] - 1 / (1 + math.exp(-z))
        inputs[e] = feats[0] + feats[1][:3]  # the item has no recent surprise
    return inputs, surprise


def random_stream(seed: int, n: int, span_ms: int) -> Stream:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, span_ms, n)) // 100 * 100  # ties on purpose
    rows = np.stack([rng.integers(0, USERS, n), rng.integers(0, ITEMS, n)], axis=1)
    return Stream.of(rows, times, rng.integers(0, 2, n).astype(np.float64))


def by_windows(features: RealtimeFeatures, events: Stream, size_ms: int) -> np.ndarray:
    """The learner's way: each event-time window's inputs, then the window folded at its end."""
    out = np.zeros((len(events), features.width))
    starts = events.time_ms // size_ms * size_ms
    for start in np.unique(starts):
        part = np.flatnonzero(starts == start)
        prepared = features.window(events.take(part), int(start) + size_ms)
        out[part] = prepared.inputs
        features.fold(prepared)
    return out


@pytest.mark.parametrize("delay_ms", [0, 1_500])
@pytest.mark.parametrize("size_ms", [700, 4_000, 100_000])
def test_window_inputs_are_those_of_the_definition_whatever_the_window(delay_ms: int, size_ms: int) -> None:
    formula = Formula(delay_ms=delay_ms, recent_ms=2_000)
    events = random_stream(1, 120, 10_000)
    expected, _ = reference(events, formula)
    got = by_windows(RealtimeFeatures([("user", USERS), ("item", ITEMS)], formula), events, size_ms)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_serving_applies_the_events_after_a_snapshot_and_answers_as_the_learner_scores() -> None:
    formula = Formula(delay_ms=1_000, recent_ms=3_000)
    events = random_stream(2, 150, 12_000)
    expected, _ = reference(events, formula)
    learner = RealtimeFeatures([("user", USERS), ("item", ITEMS)], formula)
    first = np.flatnonzero(events.time_ms < 5_000)
    learner.fold(learner.window(events.take(first), 5_000))
    serving = RealtimeFeatures([("user", USERS), ("item", ITEMS)], formula)
    serving.load(learner.state())  # the snapshot
    rest = events.take(np.arange(len(first), len(events)))
    for t in np.unique(rest.time_ms):  # every event scored before it (and its peers) is applied
        now = np.flatnonzero(rest.time_ms == t)
        got = serving.query(rest.rows[now], rest.time_ms[now])
        np.testing.assert_allclose(got, expected[len(first) + now], rtol=1e-5, atol=1e-5)
        for k in now:  # applied one by one, as they arrive
            serving.apply(rest.take(np.array([k])))


def test_the_state_round_trips_and_a_bad_one_is_refused() -> None:
    formula = Formula(delay_ms=500)
    features = RealtimeFeatures([("user", USERS), ("item", ITEMS)], formula)
    features.apply(random_stream(3, 40, 3_000))
    copy = RealtimeFeatures([("user", USERS), ("item", ITEMS)], formula)
    copy.load(features.state())
    for name, value in features.state().items():
        np.testing.assert_array_equal(copy.state()[name], value, err_msg=name)
    assert len(copy.pending["time_ms"]) > 0  # labels still waiting travel too
    bad = dict(features.state())
    bad["features.user.sums"] = np.full((USERS, len(SUMS)), np.nan)
    with pytest.raises(ValueError, match="not finite"):
        copy.load(bad)
    bad["features.user.sums"] = features.state()["features.user.sums"]
    del bad["features.item.labels_ms"]
    with pytest.raises(ValueError, match=r"features\.item\.labels_ms"):
        copy.load(bad)


def test_fresh_rows_count_as_never_seen_and_reset_forgets_them() -> None:
    features = RealtimeFeatures([("user", USERS), ("item", ITEMS)], Formula())
    seen_before = Stream.of(np.array([[1, 2], [1, 3]]), np.array([10, 20]), np.array([1.0, 1.0]))
    features.fold(features.window(seen_before, 100))
    probe = Stream.of(np.array([[1, 4]]), np.array([100]), np.array([0.0]))
    seen = features.window(probe, 200).inputs[0]
    as_new = features.window(probe, 200, {0: np.array([1])}).inputs[0]
    never = RealtimeFeatures([("user", USERS), ("item", ITEMS)], Formula())
    never.apply(Stream.of(np.array([[6, 2], [6, 3]]), np.array([10, 20]), np.array([1.0, 1.0])))
    assert seen[1] > 0 and as_new[1] == 0.0  # activity of user row 1
    np.testing.assert_allclose(as_new[:4], never.window(probe, 200).inputs[0][:4])
    features.reset({0: np.array([1])})
    np.testing.assert_allclose(features.window(probe, 200).inputs[0], as_new)


@pytest.mark.parametrize(
    "constants", [{"recent_ms": 0}, {"delay_ms": -1}, {"prior": float("nan")}, {"rate_clip": 0.5}, {"tau": 1}]
)
def test_a_spec_with_impossible_constants_is_refused(constants: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Formula.from_dict(Formula().to_dict() | constants)
