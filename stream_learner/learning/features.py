"""From event columns to model inputs: one table row per field per event.

Ids arrive as 64-bit keys (`events.hash_id`). Each field maps keys to rows of its own table in one of
two ways:

- `HashedField` (default): ``key mod rows``. Stateless; collisions are accepted.
- `DynamicField`: collisionless, in the manner of Monolith. Every id gets a slot of its own; it is
  *admitted* (uses its slot's row) once it has been seen ``admit_after`` times, and until then shares
  row 0, the out-of-vocabulary row. Its slots are its memory ceiling: when a window brings more new
  ids than there are free slots, the table reclaims the slots worth least (`pruning.Pruning`: by
  default those whose ids were seen least recently) and gives them to the new ids. Optionally, slots
  not seen for ``expire_after_ms`` of event time expire whether or not the room is needed. A slot
  freed or given to a new id must have its weights, optimiser state and real-time sums reset (the
  learner passes `Placement.fresh` to the trainer and the real-time features), so a freed slot holds
  nothing of its old id. When every slot is taken and none may be reclaimed, new ids use row 0.

Training changes a dynamic table in two steps, so that a window the guard refuses changes nothing:
`place` plans the rows of a window without changing anything, `commit` applies the plan once the
window was trained. `rows` and `rows_for_ids` are read-only lookups that never admit an id (for
prequential scoring and for serving).

Serving: ``FeatureMapper.from_spec(spec, tensors)`` rebuilds the mapping (and the real-time features,
`stream_learner.learning.realtime`) from a snapshot's model spec and its ``features.*`` tensors, then
``rows_for_ids(user_ids, item_ids, context)`` gives the (n, fields) rows to score. The state of a
dynamic field is three row-aligned arrays: ``keys`` (int64), ``last_seen_ms`` (int64, `FREE` for a free
slot) and ``pending`` (int32, sightings still needed before admission; 0 = admitted).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from stream_learner.config import FeatureSettings, ModelSettings
from stream_learner.ingest.events import MISSING_KEY, EventBatch, hash_id
from stream_learner.learning.pruning import Pruning, RowWorth, WorthOf
from stream_learner.learning.realtime import Formula, RealtimeFeatures, Stream
from stream_learner.scoring.spec import FieldSpec, ModelSpec

OOV_ROW = 0
FREE = np.iinfo(np.int64).min
STATE_ARRAYS = ("keys", "last_seen_ms", "pending")


@dataclass
class TableStats:
    """Counts of a dynamic table: slots in use now; ids admitted, expired, pruned and unplaced so
    far (on a field), or in one window (in `WindowResult.tables`, which the metrics add to their
    counters)."""

    in_use: int = 0
    admitted: int = 0
    expired: int = 0
    unplaced: int = 0  # new ids that found every slot taken
    pruned: int = 0  # slots reclaimed because the table was full


@dataclass(frozen=True)
class Plan:
    """What a window would change in a dynamic table (see `DynamicField.place`)."""

    rows: np.ndarray  # row per event
    slots: np.ndarray  # slots seen in the window (existing and new)
    pending: np.ndarray  # their pending counts after the window
    last_seen: np.ndarray  # their last sighting after the window
    new_slots: np.ndarray  # slots given to new ids (their rows must be reset)
    new_keys: np.ndarray
    expired: np.ndarray  # slots freed because unseen for too long
    pruned: np.ndarray  # slots reclaimed because the table was full (`pruning.Pruning`)
    admitted: int
    unplaced: int

    @property
    def freed(self) -> np.ndarray:
        """Every slot the plan takes from its id (expired or pruned)."""
        return np.concatenate((self.expired, self.pruned))


class HashedField:
    """Rows by hashing: ``key mod rows``."""

    table: Final = "hash"

    def __init__(self, name: str, rows: int) -> None:
        self.name, self.rows = name, rows

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        return (keys.view(np.uint64) % np.uint64(self.rows)).astype(np.int64)


class DynamicField:
    """A collisionless table of ``rows`` slots (slot 0 is the shared out-of-vocabulary row)."""

    table: Final = "dynamic"

    def __init__(
        self,
        name: str,
        rows: int,
        admit_after: int = 1,
        expire_after_ms: int | None = None,
        pruning: Pruning | None = None,
    ) -> None:
        if rows < 2:
            raise ValueError(f"a dynamic table needs at least 2 rows; {name} has {rows}")
        self.name, self.rows = name, rows
        self.admit_after = admit_after
        self.expire_after_ms = expire_after_ms
        self.pruning = pruning or Pruning()
        self.keys = np.zeros(rows, np.int64)
        self.last_seen_ms = np.full(rows, FREE, np.int64)
        self.pending = np.zeros(rows, np.int32)
        self.stats = TableStats()
        self._reindex()

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, or -1 when it has none."""
        sorted_keys = self._sorted_keys
        if len(sorted_keys) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == keys, self._sorted_slots[pos], -1)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Read-only: the slot of admitted ids, row 0 for the others."""
        slots = self._find(keys)
        admitted = slots > 0
        admitted[admitted] = self.pending[slots[admitted]] == 0
        return np.where(admitted, slots, OOV_ROW)

    def place(self, keys: np.ndarray, times_ms: np.ndarray, worth: RowWorth | None = None) -> Plan:
        """Plan the rows of a window's events without changing the table. Slots unseen for longer
        than the expiry (by the window's newest event time) are freed first; then, when the new ids
        outnumber the free slots, the pruning policy reclaims slots (of ids not seen in the window,
        by ``worth`` of this field's rows when the policy needs more than ``last_seen_ms``); lowest
        free slots are given to new ids in key order, and an id seen in the window is admitted for
        all of it."""
        if len(keys) == 0:
            none = np.empty(0, np.int64)
            return Plan(none, none, np.empty(0, np.int32), none, none, none, none, none, 0, 0)
        uniq, inverse, sightings = np.unique(keys, return_inverse=True, return_counts=True)
        last = np.full(len(uniq), FREE, np.int64)
        np.maximum.at(last, inverse, times_ms)
        slots = self._find(uniq)
        found = slots > 0
        newest = int(times_ms.max())
        taken = self.last_seen_ms != FREE
        seen = np.zeros(self.rows, bool)
        seen[slots[found]] = True
        seen[OOV_ROW] = True
        expired = np.empty(0, np.int64)
        if self.expire_after_ms is not None:
            expired = np.flatnonzero(taken & ~seen & (self.last_seen_ms < newest - self.expire_after_ms))
            taken[expired] = False
        taken[OOV_ROW] = True
        new = np.flatnonzero(~found)
        pruned = self._prune(len(new) - int((~taken).sum()), taken & ~seen, newest, worth)
        taken[pruned] = False
        given = np.flatnonzero(~taken)[: len(new)]
        slots[new[: len(given)]] = given
        placed = slots > 0
        before = np.full(len(uniq), self.admit_after, np.int64)
        before[found] = self.pending[slots[found]]
        pending = np.maximum(before - sightings, 0).astype(np.int32)
        return Plan(
            rows=np.where(placed & (pending == 0), slots, OOV_ROW)[inverse],
            slots=slots[placed],
            pending=pending[placed],
            last_seen=last[placed],
            new_slots=given,
            new_keys=uniq[new[: len(given)]],
            expired=expired,
            pruned=pruned,
            admitted=int(((before > 0) & (pending == 0) & placed).sum()),
            unplaced=len(new) - len(given),
        )

    def _prune(self, needed: int, candidates: np.ndarray, newest: int, worth: RowWorth | None) -> np.ndarray:
        """The slots to reclaim when ``needed`` more slots are wanted than are free (none when
        ``needed`` <= 0): of the ``candidates`` (a mask of taken slots whose ids the window does not
        hold), those last seen more than the guard before the newest event (as an expiry of the
        guard plus 1 ms would: a label of theirs may still be pending otherwise)."""
        if needed <= 0:
            return np.empty(0, np.int64)
        p = self.pruning
        candidates = np.flatnonzero(candidates & (self.last_seen_ms < newest - p.guard_ms - 1))
        values = self.last_seen_ms if worth is None else worth()
        return p.choose(values, candidates, p.count(self.rows, needed))

    def commit(self, plan: Plan) -> None:
        """Apply a plan made by `place` (nothing else may have changed the table in between)."""
        freed = plan.freed
        if len(freed) or len(plan.new_slots):
            self._reindex_changed(self.keys[freed], plan.new_keys, plan.new_slots)
        self.last_seen_ms[freed] = FREE
        self.pending[freed] = 0
        self.keys[freed] = 0
        self.keys[plan.new_slots] = plan.new_keys
        self.pending[plan.slots] = plan.pending
        self.last_seen_ms[plan.slots] = plan.last_seen
        self.stats.admitted += plan.admitted
        self.stats.expired += len(plan.expired)
        self.stats.pruned += len(plan.pruned)
        self.stats.unplaced += plan.unplaced

    def state(self) -> dict[str, np.ndarray]:
        return {"keys": self.keys, "last_seen_ms": self.last_seen_ms, "pending": self.pending}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        arrays = {}
        for name in STATE_ARRAYS:
            value, current = np.asarray(state[name]), getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(
                    f"features.{self.name}.{name} has shape {tuple(value.shape)}, "
                    f"but the table has {tuple(current.shape)}"
                )
            arrays[name] = value.astype(current.dtype, copy=True)
        self.keys, self.last_seen_ms, self.pending = (arrays[n] for n in STATE_ARRAYS)
        self._reindex()

    def _reindex(self) -> None:
        taken = np.flatnonzero(self.last_seen_ms != FREE)
        order = np.argsort(self.keys[taken], kind="stable")
        self._sorted_keys = self.keys[taken][order]
        self._sorted_slots = taken[order]
        self.stats.in_use = len(taken)

    def _reindex_changed(self, gone: np.ndarray, keys: np.ndarray, slots: np.ndarray) -> None:
        """`_reindex` for a commit, in linear time: the keys of freed slots ``gone`` leave the
        sorted index, the new ``keys`` (sorted, unique) of ``slots`` enter it."""
        at = np.searchsorted(self._sorted_keys, gone)
        sorted_keys = np.delete(self._sorted_keys, at)
        sorted_slots = np.delete(self._sorted_slots, at)
        at = np.searchsorted(sorted_keys, keys)
        self._sorted_keys = np.insert(sorted_keys, at, keys)
        self._sorted_slots = np.insert(sorted_slots, at, slots)
        self.stats.in_use = len(self._sorted_keys)


Field = HashedField | DynamicField


@dataclass(frozen=True)
class Placement:
    """The rows of a window for training, and what committing it will change."""

    rows: np.ndarray  # (n, fields) int64
    fresh: dict[int, np.ndarray]  # field index -> rows given to new ids or freed (reset before training)
    plans: dict[int, Plan]  # field index -> plan of each dynamic field


class FeatureMapper:
    """Maps events to an (n, fields) int64 matrix of rows: user, item, then the context fields; with
    ``realtime``, also to what the user's and item's inputs as of each event need (`stream`)."""

    def __init__(self, fields: Sequence[Field], realtime: RealtimeFeatures | None = None) -> None:
        self.fields = list(fields)
        self.realtime = realtime

    @staticmethod
    def from_settings(settings: ModelSettings, features: FeatureSettings) -> FeatureMapper:
        expiry = settings.expire_after_seconds
        expire_ms = None if expiry is None else int(expiry * 1000)
        pruning = Pruning(
            settings.prune_by, settings.prune_fraction, int(features.feedback_delay_seconds * 1000)
        )

        def id_field(name: str, rows: int) -> Field:
            if settings.table == "dynamic":
                return DynamicField(name, rows, settings.admit_after, expire_ms, pruning)
            return HashedField(name, rows)

        fields = [id_field("user", settings.user_buckets), id_field("item", settings.item_buckets)]
        for name in settings.context_fields:
            fields.append(HashedField(f"ctx.{name}", settings.context_rows(name)))
        formula = Formula(
            delay_ms=int(features.feedback_delay_seconds * 1000),
            recent_ms=int(features.recent_seconds * 1000),
        )
        realtime = (
            RealtimeFeatures([(f.name, f.rows) for f in fields[:2]], formula)
            if settings.count_features
            else None
        )
        return FeatureMapper(fields, realtime)

    @staticmethod
    def from_spec(
        spec: ModelSpec, tensors: Mapping[str, Any] | None = None, realtime: bool = True
    ) -> FeatureMapper:
        """The mapping a snapshot was trained with (for read-only lookups and the inputs when
        serving); ``tensors`` are the snapshot's (only the ``features.*`` ones are read). Without
        ``realtime`` the mapper holds no real-time features (a caller that keeps them elsewhere).
        Raises ValueError for a spec whose inputs this version cannot compute."""
        counted = spec.extra.get("count_fields", [])
        features = None
        if counted:
            if "features" not in spec.extra:
                raise ValueError("the spec has count inputs of a version before real-time features")
            formula = Formula.from_dict(spec.extra["features"])
            width = Formula.width(len(counted))
            if width != int(spec.extra.get("count_inputs", -1)):
                raise ValueError(f"the spec says {spec.extra.get('count_inputs')} count inputs, not {width}")
            if realtime:
                features = RealtimeFeatures([(f.name, f.rows) for f in spec.fields[: len(counted)]], formula)
        mapper = FeatureMapper(
            [
                DynamicField(f.name, f.rows) if f.table == "dynamic" else HashedField(f.name, f.rows)
                for f in spec.fields
            ],
            features,
        )
        if tensors is not None:
            mapper.load_state(tensors, realtime)
        return mapper

    def specs(self) -> tuple[FieldSpec, ...]:
        return tuple(FieldSpec(f.name, f.rows, f.table) for f in self.fields)

    def spec_extra(self) -> dict[str, Any]:
        """What the model spec says about the inputs besides the rows (`ModelSpec.extra`)."""
        if self.realtime is None:
            return {}
        return {
            "count_fields": list(self.realtime.names),
            "count_inputs": self.realtime.width,
            "features": self.realtime.formula.to_dict(),
        }

    @property
    def counted(self) -> int:
        """How many fields (the first ones) the real-time inputs count."""
        return 0 if self.realtime is None else len(self.realtime.names)

    def counted_rows(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Read-only (n, counted) rows of the counted fields (user, item) of id keys."""
        keys = (user, item)[: self.counted]
        return np.stack([f.lookup(k) for f, k in zip(self.fields, keys, strict=False)], axis=1)

    def stream(self, rows: np.ndarray, batch: EventBatch) -> Stream:
        """What the real-time features see of events with (n, fields) ``rows``."""
        return Stream.of(rows[:, : self.counted], batch.timestamp_ms, batch.label)

    def _columns(self, batch: EventBatch) -> list[np.ndarray]:
        columns = [batch.user, batch.item] + [batch.context[:, i] for i in range(batch.context.shape[1])]
        if len(columns) != len(self.fields):
            raise ValueError(f"events have {len(columns)} fields, the model has {len(self.fields)}")
        return columns

    def rows(self, batch: EventBatch) -> np.ndarray:
        """Read-only rows of a batch (ids not admitted map to row 0 in dynamic tables)."""
        return self.rows_from_keys(self._columns(batch))

    def rows_from_keys(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        """Read-only rows of key columns (one per field, in order)."""
        if len(columns) != len(self.fields):
            raise ValueError(f"{len(columns)} key columns for {len(self.fields)} fields")
        out = np.empty((len(columns[0]), len(self.fields)), dtype=np.int64)
        for i, (f, keys) in enumerate(zip(self.fields, columns, strict=True)):
            out[:, i] = f.lookup(np.asarray(keys, dtype=np.int64))
        return out

    def rows_for_ids(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        context: Mapping[str, Sequence[str | None]] | None = None,
    ) -> np.ndarray:
        """Read-only rows for raw id strings, one event per position (serving); see `id_columns`."""
        return self.rows_from_keys(id_columns([f.name for f in self.fields], user_ids, item_ids, context))

    def place(self, batch: EventBatch, worth: WorthOf | None = None) -> Placement:
        """Plan the rows of a window for training (admitting ids, pruning full tables by ``worth``
        of a field's rows, `pruning.Worth`); `commit` applies the plan. The slots given to new ids
        and those freed are `Placement.fresh`: all are reset."""
        columns = self._columns(batch)
        out = np.empty((len(batch), len(self.fields)), dtype=np.int64)
        fresh: dict[int, np.ndarray] = {}
        plans: dict[int, Plan] = {}
        for i, (f, keys) in enumerate(zip(self.fields, columns, strict=True)):
            if isinstance(f, DynamicField):
                of_field = None if worth is None else functools.partial(worth, i)
                plans[i] = plan = f.place(keys, batch.timestamp_ms, of_field)
                out[:, i] = plan.rows
                changed = np.union1d(plan.new_slots, plan.freed)
                if len(changed):
                    fresh[i] = changed
            else:
                out[:, i] = f.lookup(keys)
        return Placement(out, fresh, plans)

    def commit(self, placement: Placement) -> None:
        for i, plan in placement.plans.items():
            table = self.fields[i]
            assert isinstance(table, DynamicField)
            table.commit(plan)

    def stats(self) -> dict[str, TableStats]:
        """Counts of each dynamic table, by field name."""
        return {f.name: f.stats for f in self.fields if isinstance(f, DynamicField)}

    def state(self) -> dict[str, np.ndarray]:
        """The state arrays of the dynamic fields (``features.<field>.<name>``, row-aligned) and of
        the real-time features (`RealtimeFeatures.state`)."""
        out = {
            f"features.{f.name}.{k}": v
            for f in self.fields
            if isinstance(f, DynamicField)
            for k, v in f.state().items()
        }
        return out | (self.realtime.state() if self.realtime is not None else {})

    def load_state(self, tensors: Mapping[str, Any], realtime: bool = True) -> None:
        """Load what `state` gave (numpy arrays or CPU tensors); every dynamic field's must be there
        (the real-time features' only with ``realtime``)."""
        for f in self.fields:
            if isinstance(f, DynamicField):
                names = {k: f"features.{f.name}.{k}" for k in STATE_ARRAYS}
                missing = sorted(n for n in names.values() if n not in tensors)
                if missing:
                    raise ValueError(f"missing feature state {missing}")
                f.load({k: np.asarray(tensors[n]) for k, n in names.items()})
        if self.realtime is not None and realtime:
            self.realtime.load(tensors)


def id_columns(
    fields: Sequence[str],
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    context: Mapping[str, Sequence[str | None]] | None = None,
) -> list[np.ndarray]:
    """The key column of each of ``fields`` (user, item, then context fields) for raw id strings, one
    event per position. ``context`` maps a context field's name (without ``ctx.``) to its values; a
    field not given, or None, is missing."""
    if len(user_ids) != len(item_ids):
        raise ValueError(f"{len(user_ids)} user ids for {len(item_ids)} item ids")
    context = context or {}
    columns = [_keys(user_ids), _keys(item_ids)]
    for name in fields[2:]:
        values = context.get(name.removeprefix("ctx."))
        columns.append(_keys(values) if values is not None else np.full(len(item_ids), MISSING_KEY))
    return columns


def _keys(ids: Sequence[str | None]) -> np.ndarray:
    """The key of every id, each distinct one hashed once (a request repeats its user and context)."""
    keys: dict[str | None, int] = {}
    for i in ids:
        if i not in keys:
            keys[i] = hash_id(i) if i else MISSING_KEY
    return np.fromiter((keys[i] for i in ids), np.int64, len(ids))
