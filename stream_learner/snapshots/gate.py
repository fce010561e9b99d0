"""The quality gate: whether a snapshot may be served, decided by the learner as it publishes it.

A snapshot's **evidence** is the quality of the windows it adds, each scored before it was trained
on (prequential): the event-weighted mean log loss and AUC over those windows, and the same for the
held-out newest events of each window when ``train.holdout_fraction`` holds some out (scored after
training). The **reference** is the evidence of the last ``serving.reference_snapshots`` snapshots
that were judged and passed, pooled (event-weighted). A snapshot is

- **held** when its AUC is more than ``serving.max_auc_drop`` below the reference's, or its log loss
  more than ``serving.max_loss_rise`` above it (prequential, or holdout where both have it);
- **not judged** when its windows scored fewer than ``serving.min_events`` events: it keeps the
  verdict of the snapshot before it (a version that only moves offsets carries the same model), so a
  tiny window can neither hold a good model nor release a damaged one;
- **passed** otherwise, and then joins the reference. While the reference holds fewer than
  ``serving.min_events`` events (a new model) every judged snapshot passes.

The verdict, its reason, the evidence and the reference travel in the snapshot's state (``gate``),
signed with it when snapshots are signed, so every subscriber reaches the same answer and a restart
or a rollback resumes the gate where that snapshot left it. With neither threshold set every
snapshot passes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from stream_learner.config import ServingSettings
from stream_learner.snapshots.format import SnapshotMeta

Verdict = Literal["pass", "held"]


class Scored(Protocol):
    """Events scored and their log loss and AUC (`stream_learner.learning.trainer.Evaluation`)."""

    @property
    def count(self) -> int: ...
    @property
    def loss(self) -> float: ...
    @property
    def auc(self) -> float: ...


class Trained(Protocol):
    """What the gate reads of a window (`stream_learner.learning.learner.WindowResult`), so that
    reading a verdict (serving) needs nothing of the learner."""

    @property
    def evaluation(self) -> Scored: ...
    @property
    def holdout(self) -> Scored | None: ...


@dataclass
class Pool:
    """Event-weighted log loss and AUC over some evaluations (windows, or snapshots)."""

    events: int = 0
    loss_sum: float = 0.0
    auc_events: int = 0  # events of the evaluations whose AUC exists (both classes present)
    auc_sum: float = 0.0

    def add(self, events: int, loss: float, auc: float) -> None:
        if events <= 0 or not math.isfinite(loss):
            return
        self.events += events
        self.loss_sum += events * loss
        if math.isfinite(auc):
            self.auc_events += events
            self.auc_sum += events * auc

    def merge(self, other: Pool) -> None:
        self.events += other.events
        self.loss_sum += other.loss_sum
        self.auc_events += other.auc_events
        self.auc_sum += other.auc_sum

    @property
    def loss(self) -> float:
        return self.loss_sum / self.events if self.events else math.nan

    @property
    def auc(self) -> float:
        return self.auc_sum / self.auc_events if self.auc_events else math.nan

    def to_json(self) -> list[Any]:
        return [self.events, self.loss_sum, self.auc_events, self.auc_sum]

    @staticmethod
    def from_json(value: list[Any]) -> Pool:
        events, loss_sum, auc_events, auc_sum = value
        return Pool(int(events), float(loss_sum), int(auc_events), float(auc_sum))


@dataclass
class Evidence:
    """What the windows of one snapshot showed: prequential, and holdout where there is one."""

    prequential: Pool = field(default_factory=Pool)
    holdout: Pool = field(default_factory=Pool)

    def add(self, result: Trained) -> None:
        self.prequential.add(result.evaluation.count, result.evaluation.loss, result.evaluation.auc)
        h = result.holdout
        if h is not None:
            self.holdout.add(h.count, h.loss, h.auc)

    def merge(self, other: Evidence) -> None:
        self.prequential.merge(other.prequential)
        self.holdout.merge(other.holdout)

    def metrics(self) -> dict[str, float]:
        """For the envelope's ``metrics`` map (the keys with a value only)."""
        out: dict[str, float] = {}
        for name, pool in (("prequential", self.prequential), ("holdout", self.holdout)):
            if pool.events:
                out[f"{name}_events"] = float(pool.events)
                out[f"{name}_loss"] = pool.loss
                if pool.auc_events:
                    out[f"{name}_auc"] = pool.auc
        return out

    def to_json(self) -> dict[str, Any]:
        return {"prequential": self.prequential.to_json(), "holdout": self.holdout.to_json()}

    @staticmethod
    def from_json(value: dict[str, Any]) -> Evidence:
        return Evidence(Pool.from_json(value["prequential"]), Pool.from_json(value["holdout"]))


class Gate:
    """The verdicts of one model's snapshots, in version order (on the polling thread)."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.pending = Evidence()  # windows trained since the last snapshot
        self.reference: deque[Evidence] = deque(maxlen=settings.reference_snapshots)
        self.verdict: Verdict = "pass"
        self.reason = "first snapshot"

    def trained(self, result: Trained) -> None:
        """Note a window the next snapshot adds."""
        self.pending.add(result)

    def judge(self) -> tuple[dict[str, Any], dict[str, float]]:
        """The verdict on the next snapshot (it adds the windows noted since the last one), as its
        state's ``gate`` entry, and the metrics its envelope carries."""
        evidence, self.pending = self.pending, Evidence()
        self.verdict, self.reason = self._verdict(evidence)
        return self._state(evidence), evidence.metrics()

    def overrule(self, reason: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """A snapshot an operator chose (a rollback): it passes, and the gate continues from the
        state ``state`` recorded (that version's reference), or with an empty reference."""
        self.reference.clear()
        for entry in (state or {}).get("reference", []):
            self.reference.append(Evidence.from_json(entry))
        self.pending = Evidence()
        self.verdict, self.reason = "pass", reason
        return self._state(Evidence())

    def accept(self) -> None:
        """An operator accepts the model as it is (the data changed for good): the reference starts
        over, so the next judged snapshots pass while it forms again."""
        self.reference.clear()

    def restore(self, state: dict[str, Any]) -> None:
        """Continue after a restart from the ``gate`` entry of the snapshot restored."""
        self.overrule(str(state.get("reason", "restored")), state)
        self.verdict = "held" if state.get("verdict") == "held" else "pass"

    def _state(self, evidence: Evidence) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "evidence": evidence.to_json(),
            "reference": [e.to_json() for e in self.reference],
        }

    def _verdict(self, evidence: Evidence) -> tuple[Verdict, str]:
        s = self.settings
        if not s.gated:
            return "pass", "no gate (serving.max_auc_drop and serving.max_loss_rise unset)"
        if evidence.prequential.events < s.min_events:
            return self.verdict, (
                f"not judged: {evidence.prequential.events} events scored, fewer than serving.min_events "
                f"({s.min_events}); keeps the verdict before it ({self.verdict})"
            )
        reference = Evidence()
        for entry in self.reference:
            reference.merge(entry)
        if reference.prequential.events < s.min_events:
            self.reference.append(evidence)
            return "pass", f"reference still forming ({reference.prequential.events} events)"
        n = len(self.reference)
        problems = self._compare("prequential", evidence.prequential, reference.prequential, n)
        problems += self._compare("holdout", evidence.holdout, reference.holdout, n)
        if problems:
            return "held", "; ".join(problems)
        self.reference.append(evidence)
        return "pass", f"within bounds of the reference of {n} snapshots"

    def _compare(self, kind: str, mine: Pool, ref: Pool, snapshots: int) -> list[str]:
        """What is wrong with ``mine`` against the reference ``ref`` (both of one kind)."""
        if not mine.events or not ref.events:
            return []
        s, out = self.settings, []
        of = f"({snapshots} snapshots, {ref.events} events)"
        drop = ref.auc - mine.auc if mine.auc_events and ref.auc_events else 0.0
        if s.max_auc_drop is not None and drop > s.max_auc_drop:
            out.append(
                f"{kind} AUC {mine.auc:.4f} is {drop:.4f} below the reference's {ref.auc:.4f} {of}, "
                f"more than serving.max_auc_drop {s.max_auc_drop}"
            )
        rise = mine.loss - ref.loss
        if s.max_loss_rise is not None and rise > s.max_loss_rise:
            out.append(
                f"{kind} log loss {mine.loss:.4f} is {rise:.4f} above the reference's {ref.loss:.4f} {of}, "
                f"more than serving.max_loss_rise {s.max_loss_rise}"
            )
        return out


def verdict_of(meta: SnapshotMeta) -> tuple[Verdict, str]:
    """A snapshot's verdict and its reason; a snapshot without one (written without a gate, or by an
    older learner) passes."""
    try:
        gate = meta.state_dict().get("gate")
    except ValueError:
        return "pass", "no readable state"
    if not isinstance(gate, dict):
        return "pass", "no verdict"
    return ("held" if gate.get("verdict") == "held" else "pass"), str(gate.get("reason", ""))
