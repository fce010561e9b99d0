"""Per-id features as of each event: what the stream knew strictly before it.

The model is trained per window, but its per-id inputs are computed per event: an event at time t sees
every event of its counted fields (the user's and the item's rows) with an earlier event time, in
earlier windows and in its own, and never itself nor an event of the same time. Labels count only once
they are known: ``delay_ms`` after their event (`Formula.delay_ms`, ``features.feedback_delay_seconds``).
One class computes them for training, for scoring a window and for serving, so the three agree:

- the learner calls `RealtimeFeatures.window` for a closed window (the inputs of each of its events, and
  the state as of the window's end, to be kept or dropped), then `fold` once the window has been
  handled (trained or not: the features describe the stream, not the model);
- serving applies the input events that follow a snapshot with `apply` (the same two steps) and asks
  `query` for the inputs of (user, item) pairs at a time, normally now.

Per counted field and row, and for the whole stream (the ``global`` row), the state is a handful of
running sums (`SUMS`, the columns of ``features.<field>.sums``): ``events`` counts every event at once;
``labelled``, ``positives`` (the sum of the labels) and ``surprise`` (the sum of each event's label
minus what the counts predicted for it) count an event once its label is known; ``recent_weight`` and
``recent_surprise`` are the same with an exponential decay of time constant ``recent_ms``, kept as of
the row's ``labels_ms`` (the time of its newest label counted; the global row's: how far labels are
counted). Events whose label is not known yet wait in the pending buffer with their time, label and
surprise.

An event's inputs, per counted field, in this order (`INPUTS`; g is the global positive rate, 0.5 before
any label, clipped as the rates are; every sum as of t, the labelled ones as of t - delay):

1. ``rate``: logit(clip((positives + prior g) / (labelled + prior))), the row's smoothed positive rate;
2. ``activity``: log1p(events) / activity_scale;
3. ``surprise``: surprise / (labelled + prior) x surprise_scale: how much more (or less) positive the
   row's events were than the counts predicted, which separates a lenient user from one who met
   popular items;
4. ``recent_surprise`` (the user's only, the first counted field: an item's gained nothing on real
   data and cost the most): recent_surprise / (recent_weight + recent_prior) x surprise_scale, the
   surprise weighted towards the last ``recent_ms``: the session in progress.

The inputs are the user's four, then the item's three (`Formula.width`).

An event's surprise is its label minus sigmoid(logit(rate_user) + logit(rate_item) - logit(g)) with
the rates of its own inputs. A window is one compiled pass over its events in time order
(`stream_learner.learning.realtime_scan.scan`); a query from serving reads the state and the pending
labels due (`realtime_scan.query`). docs/snapshot-format.md gives the formulas and the state for
implementations in other languages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stream_learner.learning.realtime_scan import query, scan

#: Inputs per counted field, in order.
INPUTS = ("rate", "activity", "surprise", "recent_surprise")
#: Running sums per row, the columns of a field's ``sums``, in order.
SUMS = ("events", "labelled", "positives", "surprise", "recent_weight", "recent_surprise")
EVENTS, LABELLED, POSITIVES, SURPRISE, RECENT_WEIGHT, RECENT_SURPRISE = range(len(SUMS))
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
    def width(fields: int) -> int:
        """Inputs per event for ``fields`` counted fields: every field's first three `INPUTS`, the
        first field's recent surprise too."""
        return (len(INPUTS) - 1) * fields + min(fields, 1)

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
    """A window's events with their inputs ((n, width) float32, in the events' order) and surprise, and
    the state as of its end that `fold` writes: per field the rows touched and their sums and times,
    the global row, the labels still pending."""

    stream: Stream
    inputs: np.ndarray
    surprise: np.ndarray
    generation: int
    rows: list[np.ndarray]
    sums: list[np.ndarray]
    refs: list[np.ndarray]
    pending: dict[str, np.ndarray]


class RealtimeFeatures:
    """The running per-id sums of the counted fields (name, rows: the user's, the item's), the global
    row and the pending labels, and the inputs they give (see the module docstring)."""

    def __init__(self, fields: Sequence[tuple[str, int]], formula: Formula) -> None:
        if len(fields) != 2:
            raise ValueError(f"real-time features count a user and an item field, not {len(fields)} fields")
        self.names = [name for name, _ in fields]
        self.formula = formula
        self.sums = [np.zeros((rows, len(SUMS))) for _, rows in fields] + [np.zeros((1, len(SUMS)))]
        self.labels_ms = [np.full(rows, NO_TIME, np.int64) for _, rows in fields] + [np.full(1, NO_TIME)]
        self.pending = _empty_pending(len(fields))
        self.generation = 0  # folds so far: a window's preparation is valid until the next
        self._slots = [np.full(rows, -1, np.int64) for _, rows in fields]  # the scan's scratch maps

    @property
    def width(self) -> int:
        """Inputs per event."""
        return Formula.width(len(self.names))

    def initial_weights(self) -> np.ndarray:
        """A linear head's first weights: the mean of the fields' rate logits."""
        w = np.zeros(self.width, np.float32)
        w[[0, len(INPUTS)]] = 0.5
        return w

    # -- computing ----------------------------------------------------------------------------
    def window(
        self, stream: Stream, until_ms: int, fresh: Mapping[int, np.ndarray] | None = None
    ) -> Prepared:
        """The inputs of every event of ``stream`` as of its own time, its surprise, and the state as
        of ``until_ms`` (no event still to come may be older: an event-time window's end, the newest
        event's time otherwise), which `fold` keeps. Rows in ``fresh`` (field index -> rows about
        to be given to new ids) count as never seen."""
        n, p, f = len(stream), self.pending, self.formula
        order = _time_order(stream.time_ms)
        events = stream if order is None else stream.take(order)
        m = len(p["time_ms"])
        inputs = np.empty((n, self.width), np.float32)
        surprise = np.empty(n)
        waiting = np.ones(m + n, bool)
        local = [np.empty((m + n, len(SUMS))) for _ in self.names] + [np.empty((1, len(SUMS)))]
        refs = [np.empty(m + n, np.int64) for _ in self.names] + [np.empty(1, np.int64)]
        touched = [np.empty(m + n, np.int64) for _ in self.names]
        masks = [self._fresh(i, fresh) for i in range(len(self.names))]
        column = np.ascontiguousarray
        loaded = scan(
            column(events.rows[:, 0]), column(events.rows[:, 1]), events.time_ms, events.label,
            column(p["rows"][:, 0]), column(p["rows"][:, 1]), p["time_ms"], p["label"], p["surprise"],
            self.sums[0], self.labels_ms[0], self._slots[0], masks[0],
            self.sums[1], self.labels_ms[1], self._slots[1], masks[1],
            self.sums[2], self.labels_ms[2],
            local[0], refs[0], touched[0],
            local[1], refs[1], touched[1],
            local[2], refs[2],
            int(until_ms), f.delay_ms, float(f.recent_ms), f.prior, f.rate_clip, f.activity_scale,
            f.surprise_scale, f.recent_prior,
            inputs, surprise, waiting,
        )  # fmt: skip
        queued = {
            "rows": np.concatenate((p["rows"], events.rows)),
            "time_ms": np.concatenate((p["time_ms"], events.time_ms)),
            "label": np.concatenate((p["label"], events.label)),
            "surprise": np.concatenate((p["surprise"], surprise)),
        }
        later = np.flatnonzero(waiting)
        later = later[np.argsort(queued["time_ms"][later], kind="stable")]
        if order is not None:  # back to the events' own order
            inputs[order], surprise[order] = inputs.copy(), surprise.copy()
        return Prepared(
            stream,
            inputs,
            surprise,
            self.generation,
            [t[:k] for t, k in zip(touched, loaded, strict=True)],
            [s_[:k] for s_, k in zip(local, loaded, strict=False)] + [local[2]],
            [r[:k] for r, k in zip(refs, loaded, strict=False)] + [refs[2]],
            {k: v[later] for k, v in queued.items()},
        )

    def fold(self, prepared: Prepared) -> dict[int, np.ndarray]:
        """Keep the state as of a window's end that `window` prepared (against the state as it is
        now: a preparation is valid until the next fold). Returns the rows changed per field."""
        if prepared.generation != self.generation:
            raise ValueError("the window was prepared against an earlier state of the features")
        for i, rows in enumerate(prepared.rows):
            self.sums[i][rows] = prepared.sums[i]
            self.labels_ms[i][rows] = prepared.refs[i]
        self.sums[2][:] = prepared.sums[2]
        self.labels_ms[2][:] = prepared.refs[2]
        self.pending = prepared.pending
        self.generation += 1
        return dict(enumerate(prepared.rows))

    def apply(self, stream: Stream) -> dict[int, np.ndarray]:
        """`window` then `fold` as of the newest event's time (serving: events of that same time may
        still come, and are then counted as they would have been in one window)."""
        if not len(stream):
            return {}
        return self.fold(self.window(stream, int(stream.time_ms.max())))

    def query(self, rows: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
        """Inputs of (n, fields) ``rows`` at times ``time_ms`` (int64 ms), from the state and the
        pending labels due by then: for serving, once every event before those times was applied."""
        f, p = self.formula, self.pending
        rows, times = np.asarray(rows, np.int64).reshape(-1, 2), np.asarray(time_ms, np.int64)
        out = np.empty((len(times), self.width), np.float32)
        column = np.ascontiguousarray
        query(
            column(rows[:, 0]), column(rows[:, 1]), times,
            column(p["rows"][:, 0]), column(p["rows"][:, 1]), p["time_ms"], p["label"], p["surprise"],
            self.sums[0], self.labels_ms[0], self.sums[1], self.sums[2],
            f.delay_ms, float(f.recent_ms), f.prior, f.rate_clip, f.activity_scale, f.surprise_scale,
            f.recent_prior,
            out,
        )  # fmt: skip
        return out

    def reset(self, fresh: Mapping[int, np.ndarray]) -> None:
        """Forget the rows given to new ids (field index -> rows). Their previous ids have no label
        pending: a row is given again only after it was unseen for longer than any delay."""
        for i, rows in fresh.items():
            if i < len(self.names) and len(rows):
                self.sums[i][rows] = 0.0
                self.labels_ms[i][rows] = NO_TIME

    def _fresh(self, i: int, fresh: Mapping[int, np.ndarray] | None) -> np.ndarray:
        """A mask of field ``i``'s rows in ``fresh`` (empty when none)."""
        rows = fresh.get(i) if fresh else None
        if rows is None or not len(rows):
            return np.zeros(0, bool)
        mask = np.zeros(len(self.sums[i]), bool)
        mask[rows] = True
        return mask

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


def _time_order(times: np.ndarray) -> np.ndarray | None:
    """The stable order of ``times``, or None when they are in order already."""
    if len(times) < 2 or bool((times[1:] >= times[:-1]).all()):
        return None
    return np.argsort(times, kind="stable")


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
