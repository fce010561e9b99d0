"""Columnar Avro decoding: all records of a batch at once, with numpy, into `RawEvents` columns.

The reader builds no Python object per record. It walks every record of a batch field by field,
with one read position per record, and keeps what the `UserEvent` reader schema needs as columns:
strings as (start, length) slices of the batch buffer, numbers as arrays. A record that is malformed
(truncated, bad varint, negative length, bad union branch, too many entries, trailing bytes) is
marked with a detail and its position stops moving; the other records go on.

`compile_plan` resolves a writer schema against the reader schema once (Avro schema resolution):
writer fields the reader lacks are skipped, reader fields the writer lacks take their defaults
(``label`` null, ``context`` empty), ``int`` is promoted to ``long``/``float``, ``bytes`` read as
``string``. A writer schema that cannot be read as a `UserEvent` raises `IncompatibleSchema`; so does one
whose shape this reader does not cover (recursive types; a union where the reader has a plain type).

Every op may also be applied to rows already marked bad: positions never pass a record's end (a read
that does not fit leaves the position where it was) and the buffer is padded, so no read goes out of
bounds; what such rows read is never used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_learner.errors import IncompatibleSchema
from stream_learner.ingest.events import RejectReason

#: Bytes after the last record, so that fixed-width reads near the end stay inside the buffer.
PADDING = 16
#: Entries of one map or array beyond which a record is refused (bounds the work per record).
MAX_ENTRIES = 1 << 12

_TEN = np.arange(10)
_SHIFTS = (7 * _TEN).astype(np.uint64)
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


@dataclass
class RawEvents:
    """The `UserEvent` fields of n records, not yet validated. Strings are slices of ``data``."""

    user_start: np.ndarray
    user_len: np.ndarray
    item_start: np.ndarray
    item_len: np.ndarray
    type_start: np.ndarray
    type_len: np.ndarray
    timestamp: np.ndarray  # int64
    label: np.ndarray  # float32; meaningful where has_label
    has_label: np.ndarray  # bool
    ctx_start: np.ndarray  # (n, context fields) int64
    ctx_len: np.ndarray  # (n, context fields) int64; -1 where the event has no such key
    bad: np.ndarray  # bool: not decodable
    reason: np.ndarray  # object: reason label where bad
    detail: np.ndarray  # object: what was wrong where bad
    #: Every string read for the reader (what, rows, starts, lengths): UTF-8 is checked after decoding.
    texts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @staticmethod
    def allocate(n: int, context_fields: int) -> RawEvents:
        def z() -> np.ndarray:
            return np.zeros(n, np.int64)

        return RawEvents(
            z(), z(), z(), z(), z(), z(), z(),
            np.zeros(n, np.float32),
            np.zeros(n, bool),
            np.zeros((n, context_fields), np.int64),
            np.full((n, context_fields), -1, np.int64),
            np.zeros(n, bool),
            np.full(n, None, dtype=object),
            np.full(n, None, dtype=object),
        )  # fmt: skip

    def reject(self, rows: np.ndarray, reason: RejectReason, detail: str | Sequence[str]) -> None:
        """Mark ``rows`` as invalid (one detail for all, or one per row), keeping the first problem
        found for each row."""
        fresh = ~self.bad[rows]
        rows = rows[fresh]
        self.bad[rows] = True
        self.reason[rows] = reason
        self.detail[rows] = detail if isinstance(detail, str) else np.asarray(detail, dtype=object)[fresh]


class Cursor:
    """Read positions of many records in one padded uint8 buffer; failures go to ``out``."""

    def __init__(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, out: RawEvents) -> None:
        self.data = data
        self.pos = starts.astype(np.int64)
        self.end = ends.astype(np.int64)
        self.out = out
        self._f32 = np.ndarray((len(data) - 3,), dtype="<f4", buffer=data, strides=(1,))

    def fail(self, rows: np.ndarray, detail: str) -> None:
        self.out.reject(rows, "decode", detail)

    def live(self, rows: np.ndarray) -> np.ndarray:
        return rows[~self.out.bad[rows]]

    def _take(self, rows: np.ndarray, size: np.ndarray | int, what: str) -> np.ndarray:
        """Advance by ``size`` bytes where they are there; return the old positions."""
        at = self.pos[rows]
        short = size > self.end[rows] - at
        if np.any(short):
            self.fail(rows[short], f"truncated {what}")
        self.pos[rows] = np.where(short, at, at + size)
        return at

    def long(self, rows: np.ndarray, what: str = "long") -> np.ndarray:
        """Zigzag varints (Avro int and long)."""
        at = self.pos[rows]
        first = self.data[at]
        value = first.astype(np.uint64)
        size = np.ones(len(rows), np.int64)
        multi = np.flatnonzero(first >= 0x80)
        if len(multi):
            window = self.data[at[multi, None] + _TEN]
            stops = window < 0x80
            size[multi] = stops.argmax(axis=1) + 1
            parts = (window & 0x7F).astype(np.uint64) << _SHIFTS
            parts[size[multi, None] <= _TEN] = 0
            value[multi] = np.bitwise_or.reduce(parts, axis=1)
            overlong = ~stops.any(axis=1) | ((size[multi] == 10) & (window[:, 9] > 1))
            if overlong.any():
                self.fail(rows[multi[overlong]], f"{what} is not a valid varint")
        self._take(rows, size, what)
        return (value >> np.uint64(1)).view(np.int64) ^ -(value & np.uint64(1)).view(np.int64)

    def bytes(self, rows: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Length-prefixed bytes or strings: (start, length) slices."""
        length = self.long(rows, f"length of {what}")
        negative = length < 0
        if negative.any():
            self.fail(rows[negative], f"negative length of {what}")
            length = np.where(negative, 0, length)
        return self._take(rows, length, what), length

    def float32(self, rows: np.ndarray, what: str) -> np.ndarray:
        return self._f32[self._take(rows, 4, what)]

    def blocks(self, rows: np.ndarray, what: str, entry: Callable[[np.ndarray], None]) -> None:
        """Avro array/map blocks: a count (negative: followed by a byte size), entries, ... 0."""
        seen = np.zeros(len(rows), np.int64)
        todo = np.arange(len(rows))
        while len(todo):
            count = self.long(rows[todo], f"block count of {what}")
            sized = np.flatnonzero(count < 0)
            if len(sized):
                count[sized] = -count[sized]
                self.long(rows[todo[sized]], f"block size of {what}")
            excess = (count > MAX_ENTRIES) | (count < 0)  # negative: -2**63 does not negate
            seen[todo] += np.where(excess, 0, count)
            excess |= seen[todo] > MAX_ENTRIES
            if excess.any():
                self.fail(rows[todo[excess]], f"more than {MAX_ENTRIES} entries in {what}")
            keep = (count > 0) & ~self.out.bad[rows[todo]]
            todo, count = todo[keep], count[keep]
            for i in range(int(count.max()) if len(count) else 0):
                active = rows[todo[count > i]]
                entry(self.live(active))
            todo = todo[~self.out.bad[rows[todo]]]

    def finish(self, rows: np.ndarray) -> None:
        """Every byte of a record must be used."""
        rows = self.live(rows)
        left = self.end[rows] - self.pos[rows]
        extra = left != 0
        for n in np.unique(left[extra]):
            self.fail(rows[extra & (left == n)], f"{n} trailing bytes after the record")


Op = Callable[[Cursor, np.ndarray], None]
Schema = Any


def _ignore(*_: object) -> None:
    return None


class _Compiler:
    """Turns schemas into ops over (cursor, rows)."""

    def __init__(self) -> None:
        self.names: dict[str, Schema] = {}
        self._depth = 0

    def _named(self, schema: Schema, namespace: str | None) -> Schema:
        if isinstance(schema, dict) and not isinstance(schema.get("type"), str):
            return self._named(schema.get("type"), namespace)  # {"type": {...}} wraps a type
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = schema if "." in schema or namespace is None else f"{namespace}.{schema}"
            found = self.names.get(full, self.names.get(schema))
            if found is None:
                raise IncompatibleSchema(f"unknown named type {schema!r}")
            return found
        if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
            name = schema["name"]
            ns = schema.get("namespace", namespace)
            full = name if "." in name or ns is None else f"{ns}.{name}"
            self.names[full] = self.names[name.rsplit(".", 1)[-1]] = schema
        return schema

    def type_name(self, schema: Schema, namespace: str | None = None) -> str:
        schema = self._named(schema, namespace)
        if isinstance(schema, list):
            return "union"
        return schema if isinstance(schema, str) else str(schema["type"])

    def skip(self, schema: Schema, what: str, namespace: str | None = None) -> Op:
        """An op that reads past a value of ``schema``."""
        self._depth += 1
        if self._depth > 32:
            raise IncompatibleSchema("schema nests too deep (recursive type?)")
        try:
            return self._skip(self._named(schema, namespace), what, namespace)
        finally:
            self._depth -= 1

    def _skip(self, schema: Schema, what: str, namespace: str | None) -> Op:
        kind = self.type_name(schema, namespace)
        if kind == "null":
            return _ignore
        if kind in ("boolean", "float", "double", "fixed"):
            size = {"boolean": 1, "float": 4, "double": 8}.get(kind) or int(schema["size"])
            return lambda cur, rows: _ignore(cur._take(rows, size, what))
        if kind in ("int", "long", "enum"):
            return lambda cur, rows: _ignore(cur.long(rows, what))
        if kind in ("string", "bytes"):
            return lambda cur, rows: _ignore(cur.bytes(rows, what))
        if kind == "union":
            return self.union([self.skip(b, what, namespace) for b in schema], what)
        if kind == "array":
            item = self.skip(schema["items"], what, namespace)
            return lambda cur, rows: cur.blocks(rows, what, lambda r: item(cur, r))
        if kind == "map":
            value = self.skip(schema["values"], what, namespace)

            def skip_entry(cur: Cursor, rows: np.ndarray) -> None:
                cur.bytes(rows, f"key of {what}")
                value(cur, cur.live(rows))

            return lambda cur, rows: cur.blocks(rows, what, lambda r: skip_entry(cur, r))
        if kind == "record":
            ns = schema.get("namespace", namespace)
            fields = [self.skip(f["type"], f"{what}.{f['name']}", ns) for f in schema["fields"]]

            def skip_record(cur: Cursor, rows: np.ndarray) -> None:
                for op in fields:
                    op(cur, cur.live(rows))

            return skip_record
        raise IncompatibleSchema(f"type {kind!r} of {what}")

    @staticmethod
    def union(branches: Sequence[Op], what: str) -> Op:
        def read(cur: Cursor, rows: np.ndarray) -> None:
            index = cur.long(rows, f"union branch of {what}")
            wrong = (index < 0) | (index >= len(branches))
            if wrong.any():
                cur.fail(rows[wrong], f"union branch out of range in {what}")
            for b, op in enumerate(branches):
                op(cur, cur.live(rows[index == b]))

        return read


def compile_plan(writer: Schema, context_fields: Sequence[str]) -> Op:
    """Resolve a writer schema (parsed JSON) against `UserEvent`; return an op that reads records
    into ``cursor.out`` (rows that fail are marked there). Raises `IncompatibleSchema`."""
    try:
        return _compile(writer, context_fields)
    except IncompatibleSchema:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise IncompatibleSchema(f"not a valid Avro record schema: {exc!r}") from None


def _compile(writer: Schema, context_fields: Sequence[str]) -> Op:
    c = _Compiler()
    writer = c._named(writer, None)
    if c.type_name(writer) != "record":
        raise IncompatibleSchema(f"the writer schema is a {c.type_name(writer)}, not a record")
    ns = writer.get("namespace")
    names = {f["name"] for f in writer["fields"]}
    for required in ("user_id", "item_id", "event_type", "timestamp"):
        if required not in names:
            raise IncompatibleSchema(
                f"the writer schema has no field {required!r} and the reader has no default"
            )
    keys = [np.frombuffer(f.encode(), np.uint8) for f in context_fields]
    ops: list[Op] = []
    for f in writer["fields"]:
        name, schema = f["name"], f["type"]
        kind = c.type_name(schema, ns)
        if name in ("user_id", "item_id", "event_type"):
            if kind not in ("string", "bytes"):
                raise IncompatibleSchema(f"{name} is written as {kind}")
            ops.append(_string_op(name))
        elif name == "timestamp":
            if kind not in ("int", "long"):
                raise IncompatibleSchema(f"timestamp is written as {kind}, which cannot be read as a long")
            ops.append(_timestamp_op)
        elif name == "label":
            ops.append(_label_op(c, schema, ns))
        elif name == "context":
            if kind != "map" or c.type_name(schema["values"], ns) not in ("string", "bytes"):
                raise IncompatibleSchema(f"context is written as {kind}, not a map of strings")
            ops.append(_context_op(keys))
        else:
            ops.append(c.skip(schema, name, ns))

    def read(cur: Cursor, rows: np.ndarray) -> None:
        for op in ops:
            op(cur, cur.live(rows))
        cur.finish(rows)

    return read


def _string_op(name: str) -> Op:
    role = {"user_id": "user", "item_id": "item", "event_type": "type"}[name]

    def read(cur: Cursor, rows: np.ndarray) -> None:
        start, length = cur.bytes(rows, name)
        getattr(cur.out, f"{role}_start")[rows] = start
        getattr(cur.out, f"{role}_len")[rows] = length
        cur.out.texts.append((name, rows, start, length))

    return read


def _timestamp_op(cur: Cursor, rows: np.ndarray) -> None:
    cur.out.timestamp[rows] = cur.long(rows, "timestamp")


def _label_op(c: _Compiler, schema: Schema, ns: str | None) -> Op:
    branches = schema if isinstance(schema, list) else [schema]
    ops: list[Op] = []
    for branch in branches:
        kind = c.type_name(branch, ns)
        if kind == "null":
            ops.append(_ignore)
        elif kind in ("int", "long"):
            ops.append(_label_setter(lambda cur, rows: cur.long(rows, "label").astype(np.float32)))
        elif kind == "float":
            ops.append(_label_setter(lambda cur, rows: cur.float32(rows, "label")))
        else:
            raise IncompatibleSchema(f"label branch {kind} cannot be read as a float")
    return c.union(ops, "label") if isinstance(schema, list) else ops[0]


def _label_setter(read: Callable[[Cursor, np.ndarray], np.ndarray]) -> Op:
    def op(cur: Cursor, rows: np.ndarray) -> None:
        cur.out.label[rows] = read(cur, rows)
        cur.out.has_label[rows] = True

    return op


def _context_op(keys: list[np.ndarray]) -> Op:
    """Read the context map; keep the value of each configured key (the last one, like a dict)."""

    def entry(cur: Cursor, rows: np.ndarray) -> None:
        key_start, key_len = cur.bytes(rows, "context key")
        value_start, value_len = cur.bytes(rows, "context value")  # harmless where the key failed
        cur.out.texts += [
            ("context key", rows, key_start, key_len),
            ("context value", rows, value_start, value_len),
        ]
        ok = ~cur.out.bad[rows]
        for j, key in enumerate(keys):
            match = np.flatnonzero(ok & (key_len == len(key)))
            if len(key) and len(match):
                same = (cur.data[key_start[match, None] + np.arange(len(key))] == key).all(axis=1)
                match = match[same]
            cur.out.ctx_start[rows[match], j] = value_start[match]
            cur.out.ctx_len[rows[match], j] = value_len[match]

    return lambda cur, rows: cur.blocks(rows, "context", lambda r: entry(cur, r))
