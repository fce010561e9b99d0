"""Timestep windows over event columns: event-time tumbling windows or count windows.

Plain code: no Kafka, no torch; the wall clock is passed in as ``now`` (seconds).

Event time. Windows are tumbling and aligned to the epoch (start = floor(ts / size) * size), so their
boundaries survive restarts. Each partition's watermark is the highest event time it has shown minus
the allowed lateness; the job watermark is the minimum over assigned partitions that are not idle. A
partition is idle once it has reached the end of its log (the source says so) and has shown no event
for ``idle_timeout``; a paused partition is never at its end (`mark_paused`), so backpressure and
catch-up never close windows on the wall clock. A window closes when the job watermark passes its end;
when every partition is idle, all open windows close on the wall clock. Everything that ends at or
before the *horizon* (the end of the newest closed window) is closed for good: an event for such a
window is late, unless it is a replay of an offset that was handled before the last restart
(``replay_until``), which is skipped silently. Windows are emitted in order of their start.

Each closed event-time window also says how far each partition had been read when it closed
(`Window.until`: one past the highest offset the windower was given). With the offsets a snapshot
starts from, that bound determines the window's contents whatever the interleaving of partitions and
batches was: the valid events of its time range at offsets below it (`stream_learner.snapshots.lineage`).
Count windows take events in arrival order, which no bound reproduces; they carry none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch

ClosedBy = Literal["watermark", "idle", "count", "flush"]
NO_TIME = -(1 << 62)


@dataclass(frozen=True)
class Window:
    """A closed window: its events in deterministic order and the offsets it holds per partition."""

    start_ms: int
    end_ms: int
    events: EventBatch
    offsets: dict[int, tuple[int, int]]  # partition -> (lowest, highest) offset in the window
    closed_by: ClosedBy
    #: event time: partition -> one past the highest offset read from it when the window closed
    until: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class AddResult:
    windows: list[Window]
    late: np.ndarray  # bool mask over the added batch: events for windows already closed
    replayed: int  # events skipped because they were handled before the last restart


class Windower(Protocol):
    """What the job needs of a windower (`EventTimeWindower`, `CountWindower`)."""

    def assign(self, partitions: list[int], now: float) -> None: ...
    def add(self, batch: EventBatch, now: float) -> AddResult: ...
    def tick(self, now: float) -> list[Window]: ...
    def flush(self) -> list[Window]: ...
    def mark_at_end(self, partition: int) -> None: ...
    def mark_paused(self) -> None: ...
    def mark_resumed(self) -> None: ...
    def replayed(self, partition: int, offset: int) -> bool: ...
    def all_idle(self, now: float) -> bool: ...
    def watermark_ms(self, now: float) -> int | None: ...
    def newest_event_ms(self) -> int | None: ...
    def open_low_offsets(self) -> dict[int, int]: ...
    def state(self, window_end_ms: int | None) -> dict[str, int]: ...
    def restore(self, state: dict[str, int], replay_until: dict[int, int]) -> None: ...


@dataclass
class _Partition:
    max_ts: int = NO_TIME
    last_event: float = 0.0
    at_end: bool = False
    held_at_end: bool = False  # at its end when the input was held back (`mark_paused`)


def _offset_ranges(batch: EventBatch) -> dict[int, tuple[int, int]]:
    ranges: dict[int, tuple[int, int]] = {}
    for p in np.unique(batch.partition):
        offs = batch.offset[batch.partition == p]
        ranges[int(p)] = (int(offs.min()), int(offs.max()))
    return ranges


def _merge_lows(low: dict[int, int], batch: EventBatch) -> None:
    """Lower ``low`` (partition -> lowest offset) by the offsets in ``batch``."""
    for p, (lo, _) in _offset_ranges(batch).items():
        low[p] = min(low.get(p, lo), lo)


def _make_window(
    parts: list[EventBatch], start: int, end: int, closed_by: ClosedBy, until: dict[int, int]
) -> Window:
    events = EventBatch.concat(parts).sorted_by_time()
    return Window(start, end, events, _offset_ranges(events), closed_by, dict(until))


@dataclass
class _Base:
    idle_timeout_s: float
    partitions: dict[int, _Partition] = field(default_factory=dict)
    replay_until: dict[int, int] = field(default_factory=dict)  # partition -> consumed before restart
    read_until: dict[int, int] = field(default_factory=dict)  # partition -> one past the highest offset given

    def assign(self, partitions: list[int], now: float) -> None:
        """Track exactly these partitions from now on."""
        self.partitions = {p: self.partitions.get(p) or _Partition(last_event=now) for p in partitions}

    def mark_at_end(self, partition: int) -> None:
        """The source reached the end of this partition's log."""
        if partition in self.partitions:
            self.partitions[partition].at_end = True

    def mark_paused(self) -> None:
        """The source holds its input back: no partition is at its end meanwhile (what it holds
        back may be new events)."""
        for state in self.partitions.values():
            state.held_at_end, state.at_end = state.at_end, False

    def mark_resumed(self) -> None:
        """The source reads again from where it held back: a partition that was at its end is so
        again until it shows a new event (the source reports no new end for it)."""
        for state in self.partitions.values():
            state.at_end, state.held_at_end = state.held_at_end, False

    def replayed(self, partition: int, offset: int) -> bool:
        """Whether this message was handled before the last restart (its effects are committed)."""
        return offset < self.replay_until.get(partition, -1)

    def _seen(self, batch: EventBatch, now: float) -> None:
        for p in np.unique(batch.partition):
            state = self.partitions.setdefault(int(p), _Partition())
            mine = batch.partition == p
            state.max_ts = max(state.max_ts, int(batch.timestamp_ms[mine].max()))
            until = int(batch.offset[mine].max()) + 1
            self.read_until[int(p)] = max(self.read_until.get(int(p), until), until)
            state.last_event = now
            state.at_end = False

    def _idle(self, state: _Partition, now: float) -> bool:
        return state.at_end and now - state.last_event >= self.idle_timeout_s

    def all_idle(self, now: float) -> bool:
        return all(self._idle(s, now) for s in self.partitions.values())

    def newest_event_ms(self) -> int | None:
        """The newest event time seen on any partition, if any."""
        newest = max((s.max_ts for s in self.partitions.values()), default=NO_TIME)
        return None if newest == NO_TIME else newest


@dataclass
class EventTimeWindower(_Base):
    size_ms: int = 60_000
    lateness_ms: int = 0
    horizon_ms: int = NO_TIME
    _open: dict[int, list[EventBatch]] = field(default_factory=dict)
    _lows: dict[int, dict[int, int]] = field(default_factory=dict)  # window start -> partition -> low

    def add(self, batch: EventBatch, now: float) -> AddResult:
        late = np.zeros(len(batch), dtype=bool)
        replayed = 0
        if len(batch):
            starts = batch.timestamp_ms - batch.timestamp_ms % self.size_ms
            closed = starts + self.size_ms <= self.horizon_ms
            if closed.any():
                parts = batch.partition[closed]
                limit = np.full(len(parts), -1, np.int64)
                for p, until in self.replay_until.items():
                    limit[parts == p] = until
                replay = batch.offset[closed] < limit
                replayed = int(replay.sum())
                late[np.flatnonzero(closed)[~replay]] = True
            keep = ~closed
            for start in np.unique(starts[keep]).tolist():
                part = batch.take(keep & (starts == start))
                self._open.setdefault(start, []).append(part)
                _merge_lows(self._lows.setdefault(start, {}), part)
            self._seen(batch, now)
        return AddResult(self.tick(now), late, replayed)

    def watermark_ms(self, now: float) -> int | None:
        """The job watermark, or None when every partition is idle."""
        active = [s.max_ts for s in self.partitions.values() if not self._idle(s, now)]
        return min(active) - self.lateness_ms if active else None

    def tick(self, now: float) -> list[Window]:
        """Close the windows the watermark (or idleness) has passed."""
        if not self._open:
            return []
        wm = self.watermark_ms(now)
        closed_by: ClosedBy = "idle" if wm is None else "watermark"
        ready = sorted(s for s in self._open if wm is None or s + self.size_ms <= wm)
        return [self._close(s, closed_by) for s in ready]

    def flush(self) -> list[Window]:
        """Close every open window (used when the input has ended for good, e.g. a finite replay)."""
        return [self._close(s, "flush") for s in sorted(self._open)]

    def _close(self, start: int, closed_by: ClosedBy) -> Window:
        end = start + self.size_ms
        self.horizon_ms = max(self.horizon_ms, end)
        del self._lows[start]
        return _make_window(self._open.pop(start), start, end, closed_by, self.read_until)

    def open_low_offsets(self) -> dict[int, int]:
        """Per partition, the lowest offset still held by an open window."""
        low: dict[int, int] = {}
        for lows in self._lows.values():
            for p, lo in lows.items():
                low[p] = min(low.get(p, lo), lo)
        return low

    def state(self, window_end_ms: int | None) -> dict[str, int]:
        """What `restore` needs, for a model whose newest window ends at ``window_end_ms``."""
        return {} if window_end_ms is None else {"horizon_ms": window_end_ms}

    def restore(self, state: dict[str, int], replay_until: dict[int, int]) -> None:
        """Resume after a restart: windows up to the horizon are closed; offsets below
        ``replay_until`` were handled before and are skipped when they fall into them."""
        self.horizon_ms = int(state.get("horizon_ms", NO_TIME))
        self.replay_until = dict(replay_until)


@dataclass
class CountWindower(_Base):
    count: int = 10_000
    _parts: list[EventBatch] = field(default_factory=list)
    _held: int = 0
    _low: dict[int, int] = field(default_factory=dict)

    def add(self, batch: EventBatch, now: float) -> AddResult:
        windows: list[Window] = []
        pos = 0
        while pos < len(batch):
            take = min(self.count - self._held, len(batch) - pos)
            self._parts.append(batch.take(np.arange(pos, pos + take)))
            _merge_lows(self._low, self._parts[-1])
            self._held += take
            pos += take
            if self._held == self.count:
                windows.append(self._close("count"))
        if len(batch):
            self._seen(batch, now)
        windows += self.tick(now)
        return AddResult(windows, np.zeros(len(batch), dtype=bool), 0)

    def tick(self, now: float) -> list[Window]:
        return [self._close("idle")] if self._held and self.all_idle(now) else []

    def watermark_ms(self, now: float) -> int | None:
        """Count windows have no watermark."""
        return None

    def flush(self) -> list[Window]:
        return [self._close("flush")] if self._held else []

    def _close(self, closed_by: ClosedBy) -> Window:
        events = EventBatch.concat(self._parts)
        self._parts, self._held, self._low = [], 0, {}
        start, end = int(events.timestamp_ms.min()), int(events.timestamp_ms.max()) + 1
        return Window(start, end, events, _offset_ranges(events), closed_by)

    def open_low_offsets(self) -> dict[int, int]:
        return dict(self._low)

    def state(self, window_end_ms: int | None) -> dict[str, int]:
        """Nothing: count windows never overlap the committed offsets."""
        return {}

    def restore(self, state: dict[str, int], replay_until: dict[int, int]) -> None:
        """Count windows take events in consume order, so they never overlap the committed offsets
        and no event needs skipping; ``replay_until`` only tells which rejections were handled."""
        self.replay_until = dict(replay_until)


def make_windower(settings: Settings) -> Windower:
    """The windower ``[window]`` configures."""
    w = settings.window
    if w.kind == "count":
        return CountWindower(idle_timeout_s=w.idle_timeout_seconds, count=w.count)
    return EventTimeWindower(
        idle_timeout_s=w.idle_timeout_seconds,
        size_ms=int(w.size_seconds * 1000),
        lateness_ms=int(w.allowed_lateness_seconds * 1000),
    )
