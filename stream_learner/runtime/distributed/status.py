"""What the ranks of a job tell each other before every step, and what they all decide from it.

Before every step each rank's training thread sends a row of facts (`Facts`: its watermark, whether
its input is idle, the windows it holds, whether it was asked to stop, ...) and receives every
rank's (an all-gather of a few integers). `decide` turns the rows into one `Decision`, the same on
every rank:

- the job's close horizon: the minimum of the ranks' watermarks (a rank whose partitions are all
  idle does not hold it back), or, when every rank is idle, the end of the newest window open on any
  rank (the wall-clock close of a single process); it never moves back;
- which window to train now: the earliest window any rank holds, once every rank has handed its
  training thread every window that ends at or before it (``closed_ms``, the horizon its polling
  loop applied); a rank without events in it trains an empty share;
- whether to stop: a stop was asked on any rank, or every rank is done (``--exit-when-idle``);
- what the snapshot schedule needs: whether windows wait anywhere, whether a rank's commit frontier
  moved since the last snapshot, whether rank 0's clock says a snapshot is overdue.

Plain code: numpy, no torch, no Kafka.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np

from stream_learner.ingest.windowing import NO_TIME, Window

#: An integer above every time: "no window" and "no watermark" (every partition idle).
NEVER = 1 << 62


@dataclass(frozen=True)
class LocalStatus:
    """What a rank's polling loop reports with every turn."""

    watermark_ms: int | None  # this rank's watermark; None when all its partitions are idle
    idle: bool  # every partition of this rank is idle
    open_end_ms: int | None  # end of the newest window open here
    open_lows: dict[int, int]  # per partition, the lowest offset held by an open window
    positions: dict[int, int]  # per partition, the next offset to consume
    closed_ms: int  # the close horizon the loop applied: every window ending by then was handed over
    stop: bool  # a stop was requested here
    done: bool  # --exit-when-idle, idle, no window open


@dataclass(frozen=True)
class Facts:
    """One rank's row of the exchange before a step."""

    watermark_ms: int
    idle: int
    open_end_ms: int
    closed_ms: int
    next_start_ms: int  # the earliest window this rank holds for training, else NEVER
    pending: int  # windows wait here for training
    stop: int
    done: int
    moved: int  # the commit frontier moved since the last snapshot
    overdue: int  # (rank 0) windows or offsets have waited snapshot.interval_seconds

    def row(self) -> list[int]:
        return [int(v) for v in astuple(self)]

    @staticmethod
    def of(
        status: LocalStatus, next_start_ms: int | None, pending: bool, moved: bool, overdue: bool
    ) -> Facts:
        return Facts(
            watermark_ms=NEVER if status.watermark_ms is None else status.watermark_ms,
            idle=int(status.idle),
            open_end_ms=NO_TIME if status.open_end_ms is None else status.open_end_ms,
            closed_ms=status.closed_ms,
            next_start_ms=NEVER if next_start_ms is None else next_start_ms,
            pending=int(pending),
            stop=int(status.stop),
            done=int(status.done and not pending),
            moved=int(moved),
            overdue=int(overdue),
        )


_COLUMN = {f.name: i for i, f in enumerate(fields(Facts))}


@dataclass(frozen=True)
class Decision:
    """What every rank does next."""

    close_ms: int  # the job's close horizon
    train_start_ms: int | None  # the window to train now
    stop: bool
    idle: bool  # every rank idle, no window waiting anywhere
    pending: bool  # windows wait on some rank
    moved: bool  # some rank's commit frontier moved
    overdue: bool


def decide(rows: np.ndarray, close_ms: int, size_ms: int) -> Decision:
    """The decision of every rank from every rank's `Facts` rows (world, columns)."""

    def col(name: str) -> np.ndarray:
        return rows[:, _COLUMN[name]]

    all_idle = bool(col("idle").min())
    if all_idle:
        close = max(close_ms, int(col("open_end_ms").max()))
    else:
        close = max(close_ms, int(col("watermark_ms").min()))
    start = int(col("next_start_ms").min())
    handed = int(col("closed_ms").min())
    train = start if start < NEVER and start + size_ms <= handed else None
    pending = bool(col("pending").max())
    return Decision(
        close_ms=close,
        train_start_ms=train,
        stop=bool(col("stop").max()) or bool(col("done").min()),
        idle=all_idle and not pending,
        pending=pending,
        moved=bool(col("moved").max()),
        overdue=bool(col("overdue").max()),
    )


def frontier(status: LocalStatus, waiting: list[Window]) -> dict[int, int]:
    """Per partition of this rank, the next offset the model does not account for yet: the lowest
    offset held by a window still open or waiting for training, else the consume position."""
    low = dict(status.positions)
    held = [w.offsets for w in waiting]
    held.append({p: (lo, lo) for p, lo in status.open_lows.items()})
    for ranges in held:
        for p, (lo, _) in ranges.items():
            low[p] = min(low.get(p, lo), lo)
    return low
