"""Catch-up: train faster while the input lags far behind, and return to normal with hysteresis.

After an outage the learner starts hours behind its topic. `CatchUp.step` (about once a second on
the polling loop) reads the consumer lag in records and in event time (wall clock minus the newest
event read; counted only while records wait, so a quiet topic is not "behind"). Catch-up begins when
either exceeds ``catchup.enter_*`` and ends once both are at or below ``catchup.exit_*``: the gap
between the two pairs keeps the mode from flapping at the boundary.

While catching up, the learner trains with mini-batches ``catchup.batch_multiplier`` times their
ordinary size (`stream_learner.learning.trainer.mini_batch_size`), each weighted as that many
mini-batches (fewer optimiser steps per window, as much learning per event: the trainer's
`batch_multiplier`, the only knob this touches in learning, set per window by the worker) and
snapshots ``catchup.snapshot_factor`` times less often (each snapshot copies the state on the
training thread). Each window's multiplier is
recorded in the snapshot's lineage, so a replay trains it the same way.

Exported: ``stream_learner_catchup_mode`` (1 while catching up) and
``stream_learner_catchup_eta_seconds``: the lag above the exit threshold divided by the rate at which
the lag shrinks (smoothed over about ten seconds); +Inf while it does not shrink, 0 in normal mode.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from stream_learner.config import CatchupSettings
from stream_learner.metrics import Metrics
from stream_learner.runtime.report import LagSource

log = logging.getLogger(__name__)

#: How often (seconds) the lag is looked at.
CHECK_EVERY = 1.0
#: Weight of the newest drain-rate measurement in its moving average.
SMOOTHING = 0.1


class Knobs(Protocol):
    """What catch-up turns (`stream_learner.runtime.commits.Commits`)."""

    batch_multiplier: int
    snapshot_factor: int


class NewestEvent(Protocol):
    def newest_event_ms(self) -> int | None: ...


class CatchUp:
    """The training mode, from the lag (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: CatchupSettings,
        source: LagSource,
        windower: NewestEvent,
        knobs: Knobs,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.source = source
        self.windower = windower
        self.knobs = knobs
        self.metrics = metrics
        self.clock = clock
        self.catching_up = False
        self.since = 0.0  # when the current catch-up began
        self.drain = 0.0  # records per second by which the lag shrinks (smoothed)
        self._last: tuple[float, int] | None = None  # (time, lag) at the previous check

    def step(self) -> None:
        """Look at the lag (at most every `CHECK_EVERY` seconds; never when ``catchup.enabled`` is off)."""
        now = self.clock()
        if not self.settings.enabled or (self._last is not None and now - self._last[0] < CHECK_EVERY):
            return
        records = sum(self.source.lag().values())
        newest = self.windower.newest_event_ms()
        behind = max(0.0, now - newest / 1000) if newest is not None and records > 0 else 0.0
        if self._last is not None:
            then, before = self._last
            self.drain += SMOOTHING * ((before - records) / max(now - then, 1e-3) - self.drain)
        self._last = (now, records)
        s = self.settings
        if not self.catching_up and (records > s.enter_records or behind > s.enter_seconds):
            self._switch(True, now, records, behind)
        elif self.catching_up and records <= s.exit_records and behind <= s.exit_seconds:
            self._switch(False, now, records, behind)
        self.metrics.catchup_eta.set(self.eta(records))

    def eta(self, records: int) -> float:
        """Seconds until the lag is down to ``catchup.exit_records`` at the current drain rate."""
        if not self.catching_up:
            return 0.0
        left = max(0, records - self.settings.exit_records)
        return left / self.drain if self.drain > 0 else math.inf

    def _switch(self, on: bool, now: float, records: int, behind: float) -> None:
        s = self.settings
        self.catching_up = on
        self.knobs.batch_multiplier = s.batch_multiplier if on else 1
        self.knobs.snapshot_factor = s.snapshot_factor if on else 1
        self.metrics.catchup_mode.set(1 if on else 0)
        if on:
            self.since = now
            log.warning(
                "catching up: %d records and %.0f s of event time behind; mini-batches x%d, "
                "snapshots %d times less often",
                records, behind, s.batch_multiplier, s.snapshot_factor,
            )  # fmt: skip
        else:
            log.info("caught up after %.0f s: %d records behind; normal training", now - self.since, records)
