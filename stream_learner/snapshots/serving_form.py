"""The serving form of a version: what scoring reads, and nothing else (docs/snapshot-format.md,
*Serving form*; docs/decisions/serving-snapshots.md).

`convert` turns a training state (full, or a delta: its touched rows) into the serving form: no
optimiser state; per id field only the rows that hold information (`present`), their model tables at
a precision (float32, float16, or int8 with a float32 scale per row: `quantise`) and their feature
arrays in the narrowest exact type (`narrowest`); a delta also names the rows that no longer hold
information (``gone/<key>``). `ServingFold` is the serving form's chain fold (the counterpart of
`stream_learner.snapshots.chain.Fold`, with the same interface): it applies serving deltas, checking
everything before it changes anything. Pure numpy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, NoReturn

import numpy as np

from stream_learner.errors import SnapshotError
from stream_learner.scoring import compact
from stream_learner.scoring.spec import ModelSpec, table_name
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots import delta
from stream_learner.snapshots.format import Snapshot, SnapshotMeta

Precision = Literal["fp32", "fp16", "int8"]
GONE = "gone/"
#: The largest int8 code: a row's scale is its largest magnitude / this.
LEVELS = 127
#: Integer dtypes a feature array may be narrowed to, narrowest first.
_INTEGERS: tuple[type[np.integer[Any]], ...] = (
    np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64,
)  # fmt: skip
#: Dynamic-table arrays serving does not read (a present slot is taken and admitted).
_SLOT_ONLY = ("last_seen_ms", "pending")
FREE = np.iinfo(np.int64).min


def quantise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and a float32 scale per row of (rows, width) ``weights``: scale = the row's largest
    magnitude / 127, code = round(w / scale), so |w - code x scale| <= scale / 2 (a row of zeros has
    scale 0)."""
    w = np.asarray(weights, np.float32)
    scales = (
        (np.abs(w).max(axis=1) / np.float32(LEVELS)).astype(np.float32)
        if w.size
        else np.zeros(len(w), np.float32)
    )
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.clip(np.rint(w / safe[:, None]), -LEVELS, LEVELS).astype(np.int8)
    return codes, scales


def narrowest(values: np.ndarray) -> np.ndarray:
    """``values`` in the narrowest type that holds each of them exactly: integers (and floats that are
    all whole numbers within 32 bits) in the smallest integer type of their range; other floats as
    they are."""
    if values.size == 0 or values.dtype.kind not in "fiu":
        return values
    if values.dtype.kind == "f":
        whole = bool(np.all(np.isfinite(values))) and bool(np.all(values == np.rint(values)))
        if not whole or values.min() < -(1 << 31) or values.max() >= 1 << 32:
            return values
    low, high = int(values.min()), int(values.max())
    for dtype in _INTEGERS:
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


def _weights(values: np.ndarray, precision: Precision, name: str) -> dict[str, np.ndarray]:
    """A model table's rows at ``precision`` (int8 tables of width 1 are float16: a scale per value
    would be larger and less exact)."""
    if precision == "fp32":
        return {name: values}
    if precision == "fp16" or values.shape[1] == 1:
        half = values.astype(np.float16)
        if not bool(np.isfinite(half).all()):
            raise ValueError(f"{name} holds values beyond float16's range")
        return {name: half}
    codes, scales = quantise(values)
    return {name: codes, name + compact.SCALE: scales}


def _table_key(name: str, spec: ModelSpec) -> str | None:
    """The field key a training tensor is row-aligned with (model tables, their sparse optimiser
    state, the field's features), or None."""
    for f in spec.fields:
        key = table_name(f.name)
        tables = (f"embeddings.{key}.weight", f"linear.weights.{key}.weight")
        if name.removeprefix("model.") in tables or name.startswith(
            tuple(f"optim.sparse.{t}." for t in tables)
        ):
            return key
        if name.startswith(f"features.{f.name}."):
            return key
    return None


def present(field: str, rows: np.ndarray, aligned: Mapping[str, np.ndarray]) -> np.ndarray:
    """Which of ``rows`` of ``field`` hold information, from their row-aligned training tensors
    (``aligned``: name -> those rows): any sparse optimiser state or real-time sum not zero (a row
    never trained or counted has none; a pruned or reset one none again); a dynamic table's slot must
    also be taken and its id admitted (row 0, shared by every other id, is judged by its values)."""
    mask = np.zeros(len(rows), bool)
    for name, values in aligned.items():
        if values.ndim and (name.startswith("optim.") or name.endswith(".sums")):
            mask |= (values.reshape(len(rows), int(np.prod(values.shape[1:]))) != 0).any(axis=1)
    last_seen = aligned.get(f"features.{field}.last_seen_ms")
    pending = aligned.get(f"features.{field}.pending")
    if last_seen is not None and pending is not None:
        return mask & (((last_seen != FREE) & (pending == 0)) | (rows == 0))
    return mask


def convert(
    tensors: Mapping[str, np.ndarray], spec: ModelSpec, precision: Precision
) -> dict[str, np.ndarray]:
    """The serving form of a training state's ``tensors``: a full state's, or a delta's (then the
    rows it touched: those that hold information as ``rows/<key>``, the others as ``gone/<key>``).
    Optimiser state is left out; dense weights and the whole feature tensors (global row, pending
    labels) travel as they are."""
    return convert_each(tensors, spec, (precision,))[precision]


def convert_each(
    tensors: Mapping[str, np.ndarray], spec: ModelSpec, precisions: Sequence[Precision]
) -> dict[Precision, dict[str, np.ndarray]]:
    """`convert` at each of ``precisions``, the rows present found once (the forms share every
    tensor but the model tables)."""
    names = {table_name(f.name): f.name for f in spec.fields}
    is_delta = any(n.startswith(delta.ROWS) for n in tensors)
    rows: dict[str, np.ndarray] = {}
    aligned: dict[str, dict[str, np.ndarray]] = {key: {} for key in names}
    out: dict[str, np.ndarray] = {}
    tables: dict[Precision, dict[str, np.ndarray]] = {p: {} for p in precisions}
    for name, values in tensors.items():
        if is_delta and name.startswith(delta.ROWS):
            rows[name[len(delta.ROWS) :]] = values
            continue
        if is_delta and name.startswith(delta.SLICE):
            key, _, inner = name[len(delta.SLICE) :].partition("/")
            aligned[key][inner] = values
            continue
        owner = None if is_delta else _table_key(name, spec)
        if owner is not None and values.ndim and values.shape[0] == len_of(spec, owner):
            aligned[owner][name] = values
        elif not name.startswith("optim."):
            out[name] = values
    if not is_delta:
        rows = {key: np.arange(len_of(spec, key), dtype=np.int64) for key in names}
    for key, candidates in rows.items():
        mask = present(names[key], candidates, aligned[key])
        index_type = np.int32 if len_of(spec, key) <= np.iinfo(np.int32).max else np.int64
        out[compact.rows_name(key)] = candidates[mask].astype(index_type)
        if is_delta:
            out[GONE + key] = candidates[~mask].astype(index_type)
        for name, values in aligned[key].items():
            if name.startswith("optim.") or name.endswith(_SLOT_ONLY):
                continue
            kept = values[mask]
            if name.startswith("model."):
                for p in precisions:
                    tables[p].update(
                        {compact.aligned_name(key, n): v for n, v in _weights(kept, p, name).items()}
                    )
                continue
            if kept.ndim == 2:
                parts = {
                    f"{name}.{c}": narrowest(np.ascontiguousarray(kept[:, c])) for c in range(kept.shape[1])
                }
            else:
                parts = {name: narrowest(kept)}
            out.update({compact.aligned_name(key, n): v for n, v in parts.items()})
    return {p: out | tables[p] for p in precisions}


def len_of(spec: ModelSpec, key: str) -> int:
    """Rows of field ``key``'s table."""
    return next(f.rows for f in spec.fields if table_name(f.name) == key)


class ServingFold:
    """The state a serving chain has reached (the interface of `chains.Fold`): the full serving
    snapshot's tensors with the serving deltas after it applied in order."""

    def __init__(self, full: Snapshot, spec: ModelSpec) -> None:
        m = full.meta
        if m.form != "serving" or m.kind != "FULL":
            raise SnapshotError("gap", f"v{m.version} is a {m.form} {m.kind}, not a full serving snapshot")
        tensors = full.tensors()
        chains.check_finite(m.version, tensors)
        problems = compact.problems(spec, tensors)
        if problems:
            raise SnapshotError(
                "spec", f"v{m.version} is not a serving form of its spec: {'; '.join(problems[:4])}"
            )
        self.spec = spec
        self.tensors: dict[str, np.ndarray] = tensors
        self.meta: SnapshotMeta = m
        self.base: SnapshotMeta = m
        self.applied = 1

    def copy(self) -> ServingFold:
        other = copy.copy(self)
        other.tensors = {name: t.copy() for name, t in self.tensors.items()}
        return other

    def apply(self, snap: Snapshot) -> None:
        """Fold in the next serving delta; `SnapshotError` ("form", "gap", "spec", "bad_delta") leaves
        the state as it was."""
        m = snap.meta
        if m.form != "serving":
            raise SnapshotError(
                "form", f"v{m.version} is a training snapshot; the model followed is a serving form"
            )
        if m.kind != "DELTA" or m.base_version != self.meta.version:
            raise SnapshotError(
                "gap", f"{m.kind.lower()} v{m.version} continues v{m.base_version}, not v{self.meta.version}"
            )
        if m.spec != self.meta.spec and chains.read_spec(m) != self.spec:
            raise SnapshotError(
                "spec", f"delta v{m.version} has another model spec than v{self.meta.version}"
            )
        tensors = snap.tensors()
        chains.check_finite(m.version, tensors)
        apply(self.tensors, tensors, self.spec)
        self.meta = m
        self.applied += 1

    def apply_all(self, deltas: Iterable[Snapshot], on_refused: chains.OnRefused | None = None) -> None:
        """Fold in ``deltas`` in order (`chain.apply_in_order`)."""
        chains.apply_in_order(self.apply, deltas, on_refused)


def load(
    chain: Sequence[Snapshot], on_refused: chains.OnRefused | None = None
) -> tuple[ServingFold, ModelSpec]:
    """The verified state of a serving chain (a full serving snapshot and the deltas continuing it)."""
    spec = chains.read_spec(chain[0].meta)
    fold = ServingFold(chain[0], spec)
    fold.apply_all(chain[1:], on_refused)
    return fold, spec


def apply(base: dict[str, np.ndarray], change: Mapping[str, np.ndarray], spec: ModelSpec) -> None:
    """Apply serving delta ``change`` to ``base`` in place, every part checked first (`SnapshotError`
    "bad_delta"): per field, rows it names take its values (added where absent), ``gone`` rows are
    removed; a feature array whose values need a wider type is widened; other tensors are replaced."""
    plans: list[Callable[[], None]] = []
    for f in spec.fields:
        key = table_name(f.name)
        rows = change.get(compact.rows_name(key))
        if rows is None:
            continue
        gone = change.get(GONE + key, np.empty(0, np.int64))
        plans.append(_field_plan(base, change, key, f.rows, rows, gone))
    for name, value in change.items():
        if name.startswith((compact.ROWS, GONE)):
            continue
        target = base.get(name)
        same = target is not None and target.dtype == value.dtype and target.shape[1:] == value.shape[1:]
        if target is None or not same or (target.shape != value.shape and not name.startswith(delta.LISTS)):
            theirs = None if target is None else f"{target.dtype}{target.shape}"
            _bad(f"{name} is {value.dtype}{value.shape}; the base has {theirs}")
        plans.append(partial(base.__setitem__, name, value))
    for plan in plans:
        plan()


def _field_plan(
    base: dict[str, np.ndarray],
    change: Mapping[str, np.ndarray],
    key: str,
    size: int,
    rows: np.ndarray,
    gone: np.ndarray,
) -> Callable[[], None]:
    """Check field ``key``'s part of a delta; return what applies it."""
    for label, index in (("rows", rows), ("gone", gone)):
        if index.ndim != 1 or index.dtype.kind not in "iu":
            _bad(f"{label} of {key} are not a 1-d integer tensor")
        if len(index) and (index.min() < 0 or index.max() >= size or bool((index[1:] <= index[:-1]).any())):
            _bad(f"{label} of {key} are not sorted unique rows of a table of {size}")
    prefix = compact.aligned_name(key, "")
    names = sorted(n for n in base if n.startswith(prefix))
    theirs = sorted(n for n in change if n.startswith(prefix))
    if names != theirs:
        _bad(f"{key}'s row-aligned tensors are {theirs}; the base has {names}")
    for name in names:
        old, new = base[name], change[name]
        if new.shape != (len(rows), *old.shape[1:]) or (
            name.startswith(prefix + "model.") and new.dtype != old.dtype
        ):
            _bad(
                f"{name} is {new.dtype}{new.shape} for {len(rows)} rows; the base has {old.dtype}{old.shape}"
            )

    def widened(name: str) -> np.dtype:
        """The type of ``name`` after the delta: its own, or wider where the delta's values need it."""
        return np.result_type(base[name], change[name]) if len(rows) else base[name].dtype

    def run() -> None:
        present = base[compact.rows_name(key)]
        rows_typed = rows.astype(present.dtype)
        pos, hit = compact.positions(present, rows_typed)
        removed = bool(compact.positions(present, gone)[1].any()) if len(gone) else False
        if bool(hit.all()) and not removed:  # every row already there: written in place
            for name in names:
                if widened(name) != base[name].dtype:
                    base[name] = base[name].astype(widened(name))
                base[name][pos] = change[name]
            return
        keep = ~np.isin(present, rows_typed) & ~np.isin(present, gone)
        merged = np.concatenate((present[keep], rows_typed))
        order = np.argsort(merged, kind="stable")
        base[compact.rows_name(key)] = merged[order]
        for name in names:
            dtype = widened(name)
            base[name] = np.concatenate((base[name][keep].astype(dtype), change[name].astype(dtype)))[order]

    return run


def _bad(detail: str) -> NoReturn:
    raise SnapshotError("bad_delta", detail)
