"""Per-id features as of each event: what the stream knew strictly before it.

The model is trained per window, but its per-id inputs are computed per event: an event at time t sees
every event of its counted fields (the user's and the item's rows) with an earlier event time, in
earlier windows and in its own, and never itself nor an event of the same time. Labels count only once
they are known: ``delay_ms`` after their event (`Formula.delay_ms`, ``features.feedback_delay_seconds``).
One class computes them for training, for scoring a window and for serving, so the three agree:

- the learner calls `RealtimeFeatures.window` for a closed window (the inputs of each of its events and
  what folding it needs), then `fold` once the window has been handled (trained or not: the features
  describe the stream, not the model);
- serving applies the input events that follow a snapshot with `apply` (the same two steps) and asks
  `query` for the inputs of (user, item) pairs at a time, normally now.

Per counted field and row, and for the whole stream (the ``global`` row), the state is a handful of
running sums (`SUMS`, the columns of ``features.<field>.sums``): ``events`` counts every event at once;
``labelled``, ``positives`` (the sum of the labels) and ``surprise`` (the sum of each event's label
minus what the counts predicted for it) count an event once its label is known; ``recent_weight`` and
``recent_surprise`` are the same with an exponential decay of time constant ``recent_ms``, kept as of
the row's ``labels_ms``. Events whose label is not known yet wait in the pending buffer with their
time, label and surprise.

An event's inputs, per counted field, in this order (`INPUTS`; g is the global positive rate, 0.5 before
any label, clipped as the rates are; every sum as of t, the labelled ones as of t - delay):

1. ``rate``: logit(clip((positives + prior g) / (labelled + prior))), the row's smoothed positive rate;
2. ``activity``: log1p(events) / activity_scale;
3. ``surprise``: surprise / (labelled + prior) x surprise_scale: how much more (or less) positive the
   row's events were than the counts predicted, which separates a lenient user from one who met
   popular items;
4. ``recent_surprise``: recent_surprise / (recent_weight + recent_prior) x surprise_scale: the same,
   weighted towards the last ``recent_ms``.

An event's surprise is its label minus sigmoid(sum over counted fields of logit(rate) - (fields - 1)
logit(g)) with the rates of its own inputs. All of it is computed per window with sorts, cumulative
sums and a log-depth scan (decayed sums), never per event in Python; docs/snapshot-format.md gives the
formulas and the state for implementations in other languages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Inputs per counted field, in order.
INPUTS = ("rate", "activity", "surprise", "recent_surprise")
#: Running sums per row, the columns of a field's ``sums``, in order.
SUMS = ("events", "labelled", "positives", "surprise", "recent_weight", "recent_surprise")
EVENTS, LABELLED, POSITIVES, SURPRISE, RECENT_WEIGHT, RECENT_SURPRISE = range(len(SUMS))
#: The sums decayed with recent_ms (the others are plain sums).
DECAYED = (RECENT_WEIGHT, RECENT_SURPRISE)
#: Reference time of the decayed sums of each row (int64 milliseconds).
LABELS_MS = "labels_ms"
GLOBAL = "global"
PENDING = "pending"
PENDING_ARRAYS = ("rows", "time_ms", "label", "surprise")
NO_TIME = -(1 << 62)


@dataclass(frozen=True)
class Formula:
    """The constants of the inputs; they travel in the model spec (``extra.features``)."""

    delay_ms: int = 0
    recent_ms: int = 300_000
    prior: float = 5.0
    activity_scale: float = 5.0
    surprise_scale: float = 8.0
    recent_prior: float = 3.0
    rate_clip: float = 1e-3

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.recent_ms <= 0:
            raise ValueError(
                f"feature times out of range: delay_ms {self.delay_ms}, recent_ms {self.recent_ms}"
            )
        scales = (self.prior, self.activity_scale, self.surprise_scale, self.recent_prior)
        if not all(math.isfinite(x) and x > 0 for x in scales):
            raise ValueError(f"feature priors and scales must be positive and finite: {scales}")
        if not 0 < self.rate_clip < 0.5:
            raise ValueError(f"rate_clip {self.rate_clip} is not in (0, 0.5)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Formula:
        known = Formula.__dataclass_fields__
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown feature constants {unknown}")
        return Formula(**{k: type(getattr(Formula(), k))(v) for k, v in data.items()})


@dataclass(frozen=True)
class Stream:
    """Events as the features see them: the counted fields' rows ((n, fields) int64), event times
    (int64 ms) and labels (float64)."""

    rows: np.ndarray
    time_ms: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.time_ms)

    @staticmethod
    def of(rows: np.ndarray, time_ms: np.ndarray, label: np.ndarray) -> Stream:
        rows = np.asarray(rows, np.int64)
        return Stream(
            rows.reshape(len(time_ms), rows.shape[-1] if rows.ndim > 1 else -1),
            np.asarray(time_ms, np.int64),
            np.asarray(label, np.float64),
        )

    def take(self, index: np.ndarray) -> Stream:
        return Stream(self.rows[index], self.time_ms[index], self.label[index])

    @staticmethod
    def concat(parts: Sequence[Stream]) -> Stream:
        return Stream(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.time_ms for p in parts]),
            np.concatenate([p.label for p in parts]),
        )


@dataclass(frozen=True)
class Prepared:
    """A window's events with their inputs ((n, width) float32) and surprise, and what `fold` reuses:
    per field (and the global row) the events sorted and their running sums."""

    stream: Stream
    inputs: np.ndarray
    surprise: np.ndarray
    generation: int
    fields: list[_Field]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


class _Sorted:
    """One field's events sorted by (row, time), its runs of one row (segments), and a search key for
    (row, time) queries (exact for times from ``reach_ms`` before the first event on)."""

    def __init__(self, rows: np.ndarray, times: np.ndarray, reach_ms: int) -> None:
        n = len(rows)
        self.shift = (int(times.min()) if n else 0) - reach_ms - 1  # an event's time - shift >= 1
        self.span = (int(times.max()) if n else 0) - self.shift + 2
        self.stamps: np.ndarray | None = None
        if (int(rows.max()) + 1 if n else 1) * self.span >= 1 << 62:  # weeks, big tables: time ranks
            self.stamps = np.unique(times)
            self.span = len(self.stamps) + 2
        keys = self.key(rows, times)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.rows = rows[self.order]
        self.times = times[self.order]
        start = np.ones(n, bool)
        start[1:] = self.rows[1:] != self.rows[:-1]
        self.starts = np.flatnonzero(start)  # where each row's run begins
        self.lengths = np.diff(np.r_[self.starts, n])
        self.ends = self.starts + self.lengths - 1
        self.segment = np.repeat(np.arange(len(self.starts)), self.lengths)
        self.longest = int(self.lengths.max()) if n else 0

    def key(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """The search key of (row, time) pairs; times beyond the events' clip to before or after all."""
        if self.stamps is None:
            stamp = np.clip(times - self.shift, 0, self.span - 1)
        else:
            stamp = np.searchsorted(self.stamps, times, "left") + 1
        return rows * self.span + stamp

    def before(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """For each (row, time), the sorted position of its row's last event strictly before that
        time, or -1."""
        pos = np.searchsorted(self.keys, self.key(rows, times), "left") - 1
        hit = pos >= 0
        hit[hit] = self.rows[pos[hit]] == rows[hit]
        return np.where(hit, pos, -1)

    def before_own(self) -> np.ndarray:
        """For each event (in the original order), the same for its own row and time."""
        n = len(self.keys)
        run = np.ones(n, bool)
        run[1:] = self.keys[1:] != self.keys[:-1]
        previous = np.maximum.accumulate(np.where(run, np.arange(n), 0)) - 1
        first = np.repeat(self.starts, self.lengths)
        out = np.empty(n, np.int64)
        out[self.order] = np.where(previous >= first, previous, -1)
        return out


@dataclass
class _Field:
    """One field's events (sorted by `_Sorted`), the state of each run's row (``base``: (runs, `SUMS`),
    ``ref``: its labels_ms) and, per sorted event, the sums of its row just after it (by column of
    `SUMS`, as they are computed)."""

    events: _Sorted
    base: np.ndarray
    ref: np.ndarray
    after: dict[int, np.ndarray]

    def run_of(self) -> np.ndarray:
        """The run (row) of each event, in the original order."""
        out = np.empty(len(self.events.order), np.int64)
        out[self.events.order] = self.events.segment
        return out


def _scan(a: np.ndarray, b: np.ndarray, longest: int) -> np.ndarray:
    """x_j = a_j x_(j-1) + b_j for every j (x_(-1) = 0) and column, in log2(longest) vectorised
    rounds: a_j = 0 starts a new run, and no run is longer than ``longest``."""
    a, x = a.copy(), b.copy()
    step = 1
    while step < longest:
        x[step:] += a[step:] * x[:-step]
        a[step:] *= a[:-step]
        step *= 2
    return x


class RealtimeFeatures:
    """The running per-id sums of the counted fields (name, rows), the global row and the pending
    labels, and the inputs they give (see the module docstring)."""

    def __init__(self, fields: Sequence[tuple[str, int]], formula: Formula) -> None:
        self.names = [name for name, _ in fields]
        self.formula = formula
        self.sums = [np.zeros((rows, len(SUMS))) for _, rows in fields] + [np.zeros((1, len(SUMS)))]
        self.labels_ms = [np.full(rows, NO_TIME, np.int64) for _, rows in fields] + [np.full(1, NO_TIME)]
        self.pending = _empty_pending(len(fields))
        self.generation = 0  # folds so far: a window's preparation is valid until the next

    @property
    def width(self) -> int:
        """Inputs per event."""
        return len(INPUTS) * len(self.names)

    def initial_weights(self) -> np.ndarray:
        """A linear head's first weights: the mean of the fields' rate logits."""
        w = np.zeros(self.width, np.float32)
        w[0 :: len(INPUTS)] = 1.0 / len(self.names)
        return w

    # -- computing ----------------------------------------------------------------------------
    def window(self, stream: Stream, fresh: Mapping[int, np.ndarray] | None = None) -> Prepared:
        """The inputs of every event of ``stream`` as of its own time, and its surprise. Rows in
        ``fresh`` (field index -> rows about to be given to new ids) count as never seen."""
        p = self.pending
        every = Stream.concat([Stream(p["rows"], p["time_ms"], p["label"]), stream])
        waiting, d = len(p["time_ms"]), self.formula.delay_ms
        ones = np.ones(len(every))
        values = {EVENTS: np.r_[np.zeros(waiting), np.ones(len(stream))]}  # pending: counted already
        values |= {LABELLED: ones, POSITIVES: every.label, RECENT_WEIGHT: ones}
        fields, at, runs, now, first = [], [], [], [], []
        for i in range(len(self.sums)):
            field = self._field(i, every, fresh)
            counted = i < len(self.names)
            labelled = (LABELLED, POSITIVES, RECENT_WEIGHT) if counted else (LABELLED, POSITIVES)
            self._chain(i, field, values, ((EVENTS,) if counted else ()) + labelled)
            own = field.events.before_own()[waiting:]
            at.append(own if d == 0 else field.events.before(self._column(stream, i), stream.time_ms - d))
            runs.append(field.run_of()[waiting:])
            if counted:
                now.append(self._at(i, field, own, stream.time_ms, (EVENTS,), runs[i])[:, 0])
            first.append(self._at(i, field, at[i], stream.time_ms - d, labelled, runs[i]))
            fields.append(field)
        rates = self._rates(first)
        surprise = stream.label - self._expected(rates)
        values[SURPRISE] = values[RECENT_SURPRISE] = np.r_[p["surprise"], surprise]
        second = []
        for i in range(len(self.names)):
            self._chain(i, fields[i], values, (SURPRISE, RECENT_SURPRISE))
            second.append(
                self._at(i, fields[i], at[i], stream.time_ms - d, (SURPRISE, RECENT_SURPRISE), runs[i])
            )
        inputs = self._inputs(now, first, second, rates)
        return Prepared(stream, inputs, surprise, self.generation, fields)

    def query(self, rows: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
        """Inputs of (n, fields) ``rows`` at times ``time_ms`` (int64 ms), from the state alone: for
        serving, once every event before those times was applied (the pending labels count as
        their time allows)."""
        p = self.pending
        queries = Stream.of(rows, time_ms, np.zeros(len(time_ms)))
        d = self.formula.delay_ms
        ones = np.ones(len(p["time_ms"]))
        values = {LABELLED: ones, POSITIVES: p["label"], RECENT_WEIGHT: ones}
        values |= {SURPRISE: p["surprise"], RECENT_SURPRISE: p["surprise"]}
        waiting = Stream(p["rows"], p["time_ms"], p["label"])
        now, first, second = [], [], []
        for i in range(len(self.sums)):
            field = self._field(i, waiting, None)
            counted = i < len(self.names)
            labelled = (LABELLED, POSITIVES, RECENT_WEIGHT) if counted else (LABELLED, POSITIVES)
            later = (SURPRISE, RECENT_SURPRISE) if counted else ()
            self._chain(i, field, values, labelled + later)
            q = self._column(queries, i)
            at = field.events.before(q, queries.time_ms - d)
            now.append(self.sums[i][q, EVENTS])
            first.append(self._at(i, field, at, queries.time_ms - d, labelled, q, state=True))
            second.append(self._at(i, field, at, queries.time_ms - d, later, q, state=True))
        return self._inputs(now, first, second, self._rates(first))

    def fold(self, prepared: Prepared, until_ms: int) -> dict[int, np.ndarray]:
        """Add a window's events (as `window` prepared them, since the last fold) to the state as of
        ``until_ms``: no event still to come may be older (an event-time window's end; the newest
        event's time otherwise). Labels of events older than until - delay are applied (and of every
        event older than the newest time they were applied for), the others wait. Returns the rows
        changed per field index."""
        if prepared.generation != self.generation:
            raise ValueError("the window was prepared against an earlier state of the features")
        p = self.pending
        every = Stream.concat([Stream(p["rows"], p["time_ms"], p["label"]), prepared.stream])
        surprise = np.r_[p["surprise"], prepared.surprise]
        mature = max(int(self.labels_ms[-1][0]), until_ms - self.formula.delay_ms)
        changed = {}
        for i, field in enumerate(prepared.fields):
            events = field.events
            rows = events.rows[events.starts]
            counted = i < len(self.names)
            labelled: tuple[int, ...] = (LABELLED, POSITIVES)
            if counted:
                labelled += (SURPRISE, RECENT_WEIGHT, RECENT_SURPRISE)
            times = np.full(len(rows), mature, np.int64)
            at = events.before(rows, times)
            new = self._at(i, field, at, times, labelled, np.arange(len(rows)))
            if counted:
                self.sums[i][rows, EVENTS] = field.after[EVENTS][events.ends]
                changed[i] = rows
            self.sums[i][np.ix_(rows, np.array(labelled))] = new
            self.labels_ms[i][rows] = mature
        waiting = every.time_ms >= mature
        self.pending = {
            "rows": every.rows[waiting],
            "time_ms": every.time_ms[waiting],
            "label": every.label[waiting],
            "surprise": surprise[waiting],
        }
        self.generation += 1
        return changed

    def apply(self, stream: Stream) -> dict[int, np.ndarray]:
        """`window` then `fold` as of the newest event's time (serving: events of that same time may
        still come, and are then counted as they would have been in one window)."""
        if not len(stream):
            return {}
        return self.fold(self.window(stream), int(stream.time_ms.max()))

    def reset(self, fresh: Mapping[int, np.ndarray]) -> None:
        """Forget the rows given to new ids (field index -> rows). Their previous ids have no label
        pending: a row is given again only after it was unseen for longer than any delay."""
        for i, rows in fresh.items():
            if i < len(self.names) and len(rows):
                self.sums[i][rows] = 0.0
                self.labels_ms[i][rows] = NO_TIME

    # -- the sums -----------------------------------------------------------------------------
    def _column(self, stream: Stream, i: int) -> np.ndarray:
        """The rows of field ``i`` (the global row: all 0)."""
        return stream.rows[:, i] if i < len(self.names) else np.zeros(len(stream), np.int64)

    def _field(self, i: int, events: Stream, fresh: Mapping[int, np.ndarray] | None) -> _Field:
        """Field ``i``'s events sorted, with the state of their rows (rows in ``fresh``: none)."""
        ordered = _Sorted(self._column(events, i), events.time_ms, self.formula.delay_ms)
        rows = ordered.rows[ordered.starts]
        base, ref = self.sums[i][rows], self.labels_ms[i][rows]
        masked = fresh.get(i) if fresh and i < len(self.names) else None
        if masked is not None and len(masked):
            new = np.isin(rows, masked)
            base[new], ref[new] = 0.0, NO_TIME
        return _Field(ordered, base, ref, {})

    def _decay(self, elapsed: np.ndarray) -> np.ndarray:
        return np.exp(-elapsed / float(self.formula.recent_ms))

    def _chain(self, i: int, field: _Field, values: Mapping[int, np.ndarray], cols: tuple[int, ...]) -> None:
        """Fill ``field.after`` for ``cols``: per sorted event, its row's sum just after it, the state's
        plus ``values`` (by column, in the original order) up to it, decayed for the decayed sums."""
        events = field.events
        if not len(events.rows):
            field.after.update({c: np.empty(0) for c in cols})
            return
        for c in (c for c in cols if c not in DECAYED):
            total = np.cumsum(values[c][events.order])
            offset = field.base[:, c].copy()
            offset[1:] -= total[events.starts[1:] - 1]
            field.after[c] = total + np.repeat(offset, events.lengths)
        decayed = tuple(c for c in cols if c in DECAYED)
        if decayed:
            gap = _elapsed(events.times, np.r_[events.times[:1], events.times[:-1]])
            a = self._decay(gap)
            a[events.starts] = 0.0
            since = self._decay(_elapsed(events.times[events.starts], field.ref))
            b = np.stack([values[c][events.order] for c in decayed], 1)
            b[events.starts] += field.base[:, decayed] * since[:, None]
            x = _scan(np.repeat(a[:, None], len(decayed), 1), b, events.longest)
            field.after.update({c: x[:, k] for k, c in enumerate(decayed)})

    def _at(
        self,
        i: int,
        field: _Field,
        at: np.ndarray,
        times: np.ndarray,
        cols: tuple[int, ...],
        of: np.ndarray,
        state: bool = False,
    ) -> np.ndarray:
        """Sums ``cols`` for queries at ``times`` whose row's last earlier event is at sorted position
        ``at`` (-1: none), decayed to the query's time: (n, len(cols)). Without an earlier event, the
        row's state: that of run ``of`` of ``field``, or with ``state``, the state of row ``of``."""
        hit = at >= 0
        where = np.maximum(at, 0)
        state_of = self.sums[i] if state else field.base
        out = np.empty((len(at), len(cols)))
        for k, c in enumerate(cols):
            base = state_of[:, c][of]
            out[:, k] = np.where(hit, field.after[c][where], base) if len(field.events.times) else base
        decayed = [k for k, c in enumerate(cols) if c in DECAYED]
        if decayed:
            ref = self.labels_ms[i][of] if state else field.ref[of]
            last = field.events.times[where] if len(field.events.times) else ref
            since = _elapsed(times, np.where(hit, last, ref))
            out[:, decayed] *= self._decay(since)[:, None]
        return out

    def _rates(self, first: list[np.ndarray]) -> list[np.ndarray]:
        """Per counted field, the smoothed positive rate (from columns labelled, positives, ...);
        last the global rate g."""
        f, glob = self.formula, first[-1]
        labelled = glob[:, 0]
        g = np.where(labelled > 0, glob[:, 1] / np.where(labelled > 0, labelled, 1.0), 0.5)
        g = np.clip(g, f.rate_clip, 1 - f.rate_clip)
        rates = [
            np.clip((s[:, 1] + f.prior * g) / (s[:, 0] + f.prior), f.rate_clip, 1 - f.rate_clip)
            for s in first[: len(self.names)]
        ]
        return [*rates, g]

    def _expected(self, rates: list[np.ndarray]) -> np.ndarray:
        """What the rates predict: sigmoid(sum of the fields' rate logits - (fields - 1) logit(g))."""
        g = rates[-1]
        z = sum(_logit(r) for r in rates[:-1]) - (len(self.names) - 1) * _logit(g)
        return 1.0 / (1.0 + np.exp(-z))

    def _inputs(
        self,
        now: list[np.ndarray],
        first: list[np.ndarray],
        second: list[np.ndarray],
        rates: list[np.ndarray],
    ) -> np.ndarray:
        """The inputs (`INPUTS` per field): ``now`` the events before, ``first`` (labelled, positives,
        recent_weight) and ``second`` (surprise, recent_surprise) as of the labels' time."""
        f = self.formula
        out = np.empty((len(rates[-1]), self.width), np.float32)
        for i in range(len(self.names)):
            k = len(INPUTS) * i
            out[:, k] = _logit(rates[i])
            out[:, k + 1] = np.log1p(now[i]) / f.activity_scale
            out[:, k + 2] = second[i][:, 0] / (first[i][:, 0] + f.prior) * f.surprise_scale
            out[:, k + 3] = second[i][:, 1] / (first[i][:, 2] + f.recent_prior) * f.surprise_scale
        return out

    # -- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Every array: ``features.<field>.sums`` ((rows, `SUMS`) float64) and ``.labels_ms``
        (row-aligned with the field), the same for ``features.global``, and ``features.pending.*``."""
        out = {}
        for name, sums, ref in zip([*self.names, GLOBAL], self.sums, self.labels_ms, strict=True):
            out[f"features.{name}.sums"] = sums
            out[f"features.{name}.{LABELS_MS}"] = ref
        out.update({f"features.{PENDING}.{k}": v for k, v in self.pending.items()})
        return out

    def load(self, tensors: Mapping[str, Any]) -> None:
        """Load what `state` gave (numpy arrays or CPU tensors); raises ValueError naming what is
        missing or does not fit."""
        sums, refs = [], []
        for name, current in zip([*self.names, GLOBAL], self.sums, strict=True):
            sums.append(_array(tensors, f"features.{name}.sums", np.dtype(np.float64), current.shape))
            refs.append(
                _array(tensors, f"features.{name}.{LABELS_MS}", np.dtype(np.int64), current.shape[:1])
            )
        fields = len(self.names)
        time_ms = _array(tensors, f"features.{PENDING}.time_ms", np.dtype(np.int64), None)
        n = len(time_ms)
        pending = {
            "rows": _array(tensors, f"features.{PENDING}.rows", np.dtype(np.int64), (n, fields)),
            "time_ms": time_ms,
            "label": _array(tensors, f"features.{PENDING}.label", np.dtype(np.float64), (n,)),
            "surprise": _array(tensors, f"features.{PENDING}.surprise", np.dtype(np.float64), (n,)),
        }
        for i, table in enumerate(self.sums[:fields]):
            column = pending["rows"][:, i]
            if len(column) and (column.min() < 0 or column.max() >= len(table)):
                raise ValueError(f"features.{PENDING}.rows names rows outside the {self.names[i]} table")
        self.sums, self.labels_ms, self.pending = sums, refs, pending
        self.generation += 1


def _empty_pending(fields: int) -> dict[str, np.ndarray]:
    return {
        "rows": np.empty((0, fields), np.int64),
        "time_ms": np.empty(0, np.int64),
        "label": np.empty(0, np.float64),
        "surprise": np.empty(0, np.float64),
    }


def _elapsed(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Milliseconds from ``earlier`` to ``later`` as floats, never negative."""
    return np.maximum(later - earlier, 0).astype(np.float64)


def _array(
    tensors: Mapping[str, Any], key: str, dtype: np.dtype[Any], shape: tuple[int, ...] | None
) -> np.ndarray:
    if key not in tensors:
        raise ValueError(f"missing feature state {key}")
    value = tensors[key]
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if shape is not None and tuple(array.shape) != shape:
        raise ValueError(f"{key} has shape {tuple(array.shape)}, expected {shape}")
    if shape is None and array.ndim != 1:
        raise ValueError(f"{key} has shape {tuple(array.shape)}, expected one dimension")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{key} holds values that are not finite")
    return array.astype(dtype, copy=True)
