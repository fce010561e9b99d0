"""The serving form's row-aligned tensors, read without expanding them (docs/snapshot-format.md,
*Serving form*).

Per id field (by table key, e.g. ``user``, ``ctx_device``) a serving state holds ``rows/<key>``, the
sorted rows that hold information, and ``rows/<key>/<name>``, the values of those rows only of each
row-aligned tensor ``<name>``: a model table (float32, float16, or int8 with its float32 scale per row
``rows/<key>/<name>.scale``) or a feature array (any exact type). A row that is absent reads as
zeros (an absent dynamic slot has no key: its id maps to the out-of-vocabulary row, as an unseen
id's does). `gather` looks rows up by binary search and dequantises the rows it gathers, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stream_learner.scoring.layout import DTYPE, state_shapes
from stream_learner.scoring.spec import ModelSpec, table_name

ROWS = "rows/"
PREFIX = "model."
#: Suffix of an int8 table's per-row scales.
SCALE = ".scale"
#: The dtypes a model table of the serving form may have (int8 with its scales).
TABLE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8))


def rows_name(key: str) -> str:
    """Name of field ``key``'s present rows."""
    return f"{ROWS}{key}"


def aligned_name(key: str, name: str) -> str:
    """Name of tensor ``name``'s values at field ``key``'s present rows."""
    return f"{ROWS}{key}/{name}"


def is_compact(tensors: Mapping[str, np.ndarray]) -> bool:
    """The tensors are a serving form's (they name present rows)."""
    return any(name.startswith(ROWS) for name in tensors)


def positions(present: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``rows`` is in the sorted ``present`` rows, and whether it is there at all."""
    rows = np.asarray(rows, np.int64)
    if len(present) == 0:
        return np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
    rows = rows.astype(present.dtype, copy=False)  # rows are below the table's size, which fits
    pos = np.minimum(np.searchsorted(present, rows), len(present) - 1)
    return pos, present[pos] == rows


def dequantise(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 rows of int8 ``codes`` with their per-row ``scales``."""
    return codes.astype(np.float32) * scales.reshape(-1, *([1] * (codes.ndim - 1)))


def gather(
    tensors: Mapping[str, np.ndarray],
    key: str,
    name: str,
    rows: np.ndarray,
    dtype: type = np.float32,
    fill: float = 0,
    where: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Values of ``name`` at ``rows`` of field ``key`` in ``dtype``, ``fill`` where a row is absent;
    int8 values are dequantised with their scales (only the rows gathered). ``where``: the rows'
    `positions`, when already found."""
    values = tensors[aligned_name(key, name)]
    pos, hit = where if where is not None else positions(tensors[rows_name(key)], rows)
    out = np.full((len(pos), *values.shape[1:]), fill, dtype)
    at = pos[hit]
    if values.dtype == np.int8:
        out[hit] = dequantise(values[at], tensors[aligned_name(key, name + SCALE)][at])
    else:
        out[hit] = values[at]
    return out


def problems(spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> list[str]:
    """What keeps ``tensors`` from being a serving form of the model ``spec`` describes (empty when
    nothing does): each field's present rows (sorted, unique, 1-d integers within its table), each
    table at those rows (its width; float32, float16, or int8 with float32 scales), every other weight
    float32 of its shape."""
    out: list[str] = []
    present: dict[str, int] = {}
    for f in spec.fields:
        key = table_name(f.name)
        rows = tensors.get(rows_name(key))
        if rows is None or rows.ndim != 1 or rows.dtype.kind not in "iu":
            out.append(f"{rows_name(key)} is missing or not a 1-d integer tensor")
            continue
        if len(rows) and (rows[0] < 0 or rows[-1] >= f.rows or bool((rows[1:] <= rows[:-1]).any())):
            out.append(f"{rows_name(key)} is not sorted unique rows of a table of {f.rows}")
        present[key] = len(rows)
    for name, shape in state_shapes(spec).items():
        field = table_key(name, spec)
        if field is None:
            value = tensors.get(PREFIX + name)
            if value is None or value.dtype != DTYPE or value.shape != shape:
                out.append(f"{PREFIX}{name} is not {DTYPE}{shape}")
            continue
        if field not in present:
            continue
        full = aligned_name(field, PREFIX + name)
        value = tensors.get(full)
        if value is None or value.dtype not in TABLE_DTYPES or value.shape != (present[field], *shape[1:]):
            out.append(f"{full} is not a table of {present[field]} rows of width {shape[1]}")
        elif value.dtype == np.int8:
            scale = tensors.get(full + SCALE)
            if scale is None or scale.dtype != DTYPE or scale.shape != (present[field],):
                out.append(f"{full}{SCALE} is not the float32 scale of each of its rows")
    return out


def table_key(name: str, spec: ModelSpec) -> str | None:
    """The field key of a row-aligned model table ``name`` (``embeddings.<key>.weight``, ...)."""
    for f in spec.fields:
        key = table_name(f.name)
        if name in (f"embeddings.{key}.weight", f"linear.weights.{key}.weight"):
            return key
    return None
