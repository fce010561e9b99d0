"""The quality gate's verdicts: the reference of passing snapshots, count awareness, holdout, and
what a restart, a rollback and an operator's acceptance do to it."""

from __future__ import annotations

import json
import math

from stream_learner.config import ServingSettings
from stream_learner.learning.learner import WindowResult
from stream_learner.learning.rates import LRUpdate
from stream_learner.learning.trainer import Evaluation
from stream_learner.snapshots.format import SnapshotMeta
from stream_learner.snapshots.gate import Gate, verdict_of

GATED = ServingSettings(max_auc_drop=0.05, max_loss_rise=0.1, reference_snapshots=3, min_events=1000)


def _window(events: int, loss: float, auc: float, holdout: Evaluation | None = None) -> WindowResult:
    return WindowResult(
        0, 1000, events, 999, Evaluation(loss, auc, events), LRUpdate(0.1), None, None, holdout
    )


def _snapshot(gate: Gate, *windows: WindowResult) -> tuple[str, str, dict[str, float]]:
    for w in windows:
        gate.trained(w)
    state, metrics = gate.judge()
    json.dumps(state, allow_nan=False)  # the state is plain JSON
    return state["verdict"], state["reason"], metrics


def test_without_thresholds_every_snapshot_passes():
    gate = Gate(ServingSettings())
    assert _snapshot(gate, _window(5000, 0.5, 0.8))[0] == "pass"
    assert _snapshot(gate, _window(5000, 3.0, 0.2))[0] == "pass"


def test_a_drop_below_the_reference_holds_and_the_reference_is_of_passing_snapshots_only():
    gate = Gate(GATED)
    for auc in (0.70, 0.72, 0.74):  # the reference forms, then judges: all within bounds
        assert _snapshot(gate, _window(2000, 0.5, auc))[0] == "pass"
    verdict, reason, metrics = _snapshot(gate, _window(600, 0.9, 0.4), _window(600, 0.9, 0.5))
    assert verdict == "held"
    assert "prequential AUC 0.4500" in reason and "serving.max_auc_drop" in reason
    assert "prequential log loss 0.9000" in reason  # the loss rose too
    assert metrics == {"prequential_events": 1200.0, "prequential_loss": 0.9, "prequential_auc": 0.45}
    # the held snapshot did not join the reference: a still damaged model stays held
    assert _snapshot(gate, _window(2000, 0.52, 0.66))[0] == "held"
    # the reference (the last three passing: 0.70, 0.72, 0.74, event-weighted) lets 0.69 through
    verdict, reason, _ = _snapshot(gate, _window(2000, 0.52, 0.69))
    assert verdict == "pass" and "reference of 3 snapshots" in reason


def test_a_snapshot_with_too_few_events_is_not_judged_and_keeps_the_verdict_before_it():
    gate = Gate(GATED)
    _snapshot(gate, _window(2000, 0.5, 0.75))
    _snapshot(gate, _window(2000, 0.5, 0.75))
    assert _snapshot(gate, _window(999, 5.0, 0.1))[0] == "pass"  # a tiny window cannot hold...
    assert _snapshot(gate, _window(2000, 0.9, 0.5))[0] == "held"
    verdict, reason, _ = _snapshot(gate, _window(10, 0.5, 0.9))  # ...nor release
    assert verdict == "held" and "not judged" in reason
    assert _snapshot(gate)[0] == "held"  # a version that only moves offsets: the same model
    assert _snapshot(gate)[2] == {}


def test_holdout_is_judged_too_where_both_have_it():
    gate = Gate(GATED)
    good, bad = Evaluation(0.5, 0.75, 500), Evaluation(0.5, 0.6, 500)
    assert _snapshot(gate, _window(2000, 0.5, 0.75, good))[0] == "pass"
    verdict, reason, metrics = _snapshot(gate, _window(2000, 0.5, 0.75, bad))
    assert verdict == "held" and reason.startswith("holdout AUC 0.6000")
    assert metrics["holdout_events"] == 500 and metrics["holdout_auc"] == 0.6


def test_restore_overrule_and_accept():
    gate = Gate(GATED)
    for _ in range(2):
        _snapshot(gate, _window(2000, 0.5, 0.75))
    state, _ = gate.judge()  # nothing trained: keeps "pass", carries the reference
    _snapshot(gate, _window(2000, 0.9, 0.5))
    restarted = Gate(GATED)
    restarted.restore({**state, "verdict": "held"})
    assert restarted.verdict == "held" and len(restarted.reference) == 2
    assert _snapshot(restarted, _window(2000, 0.9, 0.5))[0] == "held"
    # a rollback continues from the state of the version it returns to
    rolled = restarted.overrule("rollback to v2", state)
    assert rolled["verdict"] == "pass" and rolled["reason"] == "rollback to v2"
    assert _snapshot(restarted, _window(2000, 0.9, 0.5))[0] == "held"
    # an operator accepts the change: the reference forms again from the next snapshots
    restarted.accept()
    assert _snapshot(restarted, _window(2000, 0.9, 0.5))[0] == "pass"
    assert _snapshot(restarted, _window(2000, 0.92, 0.49))[0] == "pass"


def test_nan_auc_windows_count_for_the_loss_only():
    gate = Gate(GATED)
    _, _, metrics = _snapshot(gate, _window(1500, 0.4, math.nan))
    assert metrics == {"prequential_events": 1500.0, "prequential_loss": 0.4}


def test_verdict_of_a_snapshot_without_one_is_pass():
    meta = SnapshotMeta("m", 1, "FULL", "{}", 0, 0, 0, 0, state=json.dumps({"learner": {}}))
    assert verdict_of(meta)[0] == "pass"
    held = SnapshotMeta(
        "m", 2, "FULL", "{}", 0, 0, 0, 0, state=json.dumps({"gate": {"verdict": "held", "reason": "x"}})
    )
    assert verdict_of(held) == ("held", "x")
