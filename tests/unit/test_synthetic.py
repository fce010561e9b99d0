"""The synthetic generator: deterministic, learnable with a known ceiling, drift at known times, and
its events are what the codec makes of its records."""

from __future__ import annotations

import numpy as np

from stream_learner.ingest.codec import Decoder, encode_event
from stream_learner.learning.quality import roc_auc
from stream_learner.tools.synthetic import Drift, SyntheticConfig, SyntheticStream


class Msg:
    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_same_seed_same_events_and_a_ceiling_well_above_chance() -> None:
    a, b = (
        SyntheticStream(SyntheticConfig(seed=3)).batch(20_000, 0, 1),
        SyntheticStream(SyntheticConfig(seed=3)).batch(20_000, 0, 1),
    )
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.user_id, b.user_id)
    assert 0.2 < a.label.mean() < 0.6
    assert roc_auc(a.label, a.probability) > 0.75


def test_drift_changes_the_truth_from_its_start_abruptly_or_gradually() -> None:
    plain = SyntheticStream(SyntheticConfig(seed=1))
    users, items = np.arange(200) % 50, np.arange(200) % 30
    ctx = {"device": np.zeros(200, int), "section": np.zeros(200, int)}
    for kind, target in (("abrupt", "items"), ("gradual", "users"), ("abrupt", "context")):
        drift = Drift(1_000, kind, span=1_000, target=target)
        drifted = SyntheticStream(SyntheticConfig(seed=1, drifts=(drift,)))
        before = np.full(200, 999)
        np.testing.assert_allclose(
            drifted.probability(users, items, before, ctx), plain.probability(users, items, before, ctx)
        )
        after = np.full(200, 2_500)
        assert (
            np.abs(
                drifted.probability(users, items, after, ctx) - plain.probability(users, items, after, ctx)
            ).max()
            > 0.05
        )
        if kind == "gradual":
            half = drifted.probability(users, items, np.full(200, 1_500), ctx)
            start, end = (
                plain.probability(users, items, before, ctx),
                drifted.probability(users, items, after, ctx),
            )
            np.testing.assert_allclose(half, (start + end) / 2)


def test_events_are_what_the_codec_decodes_from_the_records() -> None:
    batch = SyntheticStream().batch(50, 1_000_000, 10)
    messages = [Msg(encode_event(r), i) for i, r in enumerate(batch.records())]
    decoded = Decoder(["section", "device"], clock=lambda: 1_000.0).decode(messages)
    assert not decoded.rejected
    ours = batch.events(["section", "device"])
    for name in ("user", "item", "context", "label", "timestamp_ms", "offset"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(decoded.batch, name), err_msg=name)
