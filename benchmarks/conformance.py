"""Writes the conformance vectors under conformance/: small snapshots, requests, and what the package
computes for each, step by step, for another implementation to check itself against.

    .venv/bin/python -m benchmarks.conformance            # rewrites conformance/
    .venv/bin/python -m benchmarks.conformance --output DIR

Each case is one model (a kind, its tables, its context fields, its real-time features) whose weights
are drawn from a seeded generator and whose id tables and real-time features come from a seeded
stream of events applied as the learner applies a window (`FeatureMapper.place` / `commit`,
`RealtimeFeatures.window` / `fold`). The snapshot is written as a learner writes one (one full
snapshot, format 1, in the checkpoint-file framing: each envelope after its 4-byte big-endian
length); a case with a ``precision`` is the serving form of such a state (format 3,
`stream_learner.snapshots.serving_form`), the rows its stream touched holding information (as a
sparse optimiser's state would say); each query's keys, rows, real-time inputs, logits and scores
are the package's own (`stream_learner.serving.model.ServableModel`, whose model is
`stream_learner.scoring.model`). tests/unit/test_conformance.py checks that the package still
computes them, that this script writes them again, and that the ONNX export scores the training
snapshots' within 1e-5.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from safetensors.numpy import save

from stream_learner.avro_schemas import load_schema
from stream_learner.config import FeatureSettings, ModelSettings
from stream_learner.ingest.events import MISSING_KEY, EventBatch, hash_id
from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.realtime import Formula
from stream_learner.scoring.layout import state_shapes
from stream_learner.scoring.spec import ModelSpec, table_name
from stream_learner.serving.compact import compact_inputs
from stream_learner.serving.model import ServableModel
from stream_learner.snapshots import serving_form
from stream_learner.snapshots.format import SERVING_FORMAT_VERSION, SNAPSHOT_SCHEMA

OUTPUT = Path(__file__).resolve().parents[1] / "conformance"
#: The time the snapshots were made and the queries are asked around (fixed: the files never change).
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EVENTS = 600
USERS, ITEMS = 40, 25
DEVICES = ("ios", "android", "web")


@dataclass(frozen=True)
class Case:
    name: str
    model: dict[str, Any]
    delay_seconds: float = 0.0
    seed: int = 0
    queries: list[dict[str, Any]] = field(default_factory=list)
    precision: serving_form.Precision | None = None  # the serving form at this precision


def _queries(context: bool) -> list[dict[str, Any]]:
    ctx = {"device": "ios"} if context else None
    items = ["i0", "i3", "i7", "i12", "i24", "i-unseen"]
    return [
        {"user": "u1", "items": items, "context": ctx, "at_ms": T0},
        {"user": "u17", "items": items[:3], "context": {"device": "web", "unknown": "x"} if context else None,
         "at_ms": T0 + 45_000},
        {"user": "u-unseen", "items": items[:4], "context": None, "at_ms": T0 + 120_000},
        {"user": "u5", "items": ["i1", "i2"], "context": ctx, "at_ms": T0 + 3_600_000},
    ]  # fmt: skip


FM_CONTEXT = {
    "kind": "fm",
    "embedding_dim": 4,
    "user_buckets": 97,
    "item_buckets": 61,
    "context_fields": ["device"],
    "context_buckets": 7,
}

CASES = [
    Case(
        "logistic-hashed",
        {"kind": "logistic", "user_buckets": 97, "item_buckets": 61, "count_features": False},
        queries=_queries(context=False),
    ),
    Case("fm-hashed-context", FM_CONTEXT, seed=1, queries=_queries(context=True)),
    Case("fm-serving-int8", FM_CONTEXT, seed=1, queries=_queries(context=True), precision="int8"),
    Case(
        "dnn-dynamic-delayed",
        {
            "kind": "dnn",
            "embedding_dim": 4,
            "hidden": [8, 4],
            "user_buckets": 64,
            "item_buckets": 32,
            "table": "dynamic",
            "admit_after": 2,
            "context_fields": ["device"],
            "context_buckets": 7,
        },
        delay_seconds=60.0,
        seed=2,
        queries=_queries(context=True),
    ),
]


def _events(rng: np.random.Generator, context: bool) -> EventBatch:
    """The stream the features and id tables are built from: ``EVENTS`` events over the 5 minutes
    before ``T0``, some of them of the same millisecond."""
    users = [f"u{k}" for k in rng.integers(0, USERS, EVENTS)]
    items = [f"i{k}" for k in rng.integers(0, ITEMS, EVENTS)]
    times = np.sort(T0 - rng.integers(0, 300_000, EVENTS) // 7 * 7)
    devices = [DEVICES[k] if k < len(DEVICES) else None for k in rng.integers(0, len(DEVICES) + 1, EVENTS)]
    ctx = np.array([[hash_id(d) if d else MISSING_KEY] for d in devices], np.int64) if context else None
    return EventBatch(
        user=np.array([hash_id(u) for u in users], np.int64),
        item=np.array([hash_id(i) for i in items], np.int64),
        context=ctx if ctx is not None else np.empty((EVENTS, 0), np.int64),
        label=(rng.random(EVENTS) < 0.3).astype(np.float32),
        timestamp_ms=times.astype(np.int64),
        partition=np.zeros(EVENTS, np.int32),
        offset=np.arange(EVENTS, dtype=np.int64),
        item_ids=np.array(items, dtype=object),
    )


def _window(batch: EventBatch, start: int, stop: int) -> EventBatch:
    return EventBatch(**{k: v[start:stop] for k, v in vars(batch).items()})


def state(case: Case) -> tuple[ModelSpec, dict[str, np.ndarray], list[str]]:
    """The model spec, the tensors of the snapshot (the serving form's, for a case with a precision)
    and its recently active items."""
    rng = np.random.default_rng(case.seed)
    settings = ModelSettings.model_validate(case.model)
    features = FeatureSettings(feedback_delay_seconds=case.delay_seconds)
    mapper = FeatureMapper.from_settings(settings, features)
    batch = _events(rng, bool(settings.context_fields))
    touched = []
    for start in range(0, EVENTS, 150):  # four windows, each applied as the learner applies one
        window = _window(batch, start, start + 150)
        placement = mapper.place(window)
        touched.append(placement.rows)
        if mapper.realtime is not None:
            until = int(window.timestamp_ms.max()) + 1
            prepared = mapper.realtime.window(mapper.stream(placement.rows, window), until, placement.fresh)
            mapper.realtime.reset(placement.fresh)
            mapper.realtime.fold(prepared)
        mapper.commit(placement)
    spec = ModelSpec(
        kind=settings.kind,
        fields=mapper.specs(),
        embedding_dim=settings.embedding_dim,
        hidden=tuple(settings.hidden),
        dropout=settings.dropout,
        extra=mapper.spec_extra(),
    )
    tensors = {
        f"model.{k}": rng.normal(0.0, 0.3, shape).astype(np.float32)
        for k, shape in state_shapes(spec).items()
    }
    tensors |= {k: np.ascontiguousarray(v) for k, v in mapper.state().items()}
    recent = list(dict.fromkeys(batch.item_ids[::-1].tolist()))[:10]
    if case.precision is None:
        return spec, tensors, recent
    rows = np.concatenate(touched)
    for i, f in enumerate(spec.fields):  # what a sparse optimiser would hold: the rows trained
        for table in ("embeddings", "linear.weights"):
            name = f"{table}.{table_name(f.name)}.weight"
            accumulator = np.zeros_like(tensors[f"model.{name}"])
            accumulator[rows[:, i]] = 1.0
            tensors[f"optim.sparse.{name}.sum"] = accumulator
    return spec, serving_form.convert(tensors, spec, case.precision), recent


def envelope(case: Case, spec: ModelSpec, payload: bytes, recent: list[str]) -> bytes:
    """The one envelope of version 1 of the case's model: format 1 (no signature field), or 3 for a
    serving form (the layout with it, unsigned)."""
    schema = load_schema("model_snapshot")
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "signature"]
    serving = {"signature": None} if case.precision is not None else {}
    record: dict[str, Any] = {
        "format_version": SERVING_FORMAT_VERSION if serving else 1,
        "model_name": case.name,
        "version": 1,
        "kind": "FULL",
        "base_version": None,
        "created_ms": T0,
        "window_start_ms": T0 - 300_000,
        "window_end_ms": T0,
        "newest_event_ms": T0 - 1,
        "offsets": [{"topic": "events", "partition": 0, "first": 0, "last": EVENTS - 1}],
        "metrics": {},
        "spec": spec.to_json(),
        "state": json.dumps({"learner": {"recent_items": recent}, "windowing": {"horizon_ms": T0}}),
        "chunk_index": 0,
        "chunk_count": 1,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_size": len(payload),
        "payload": payload,
        **serving,
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SNAPSHOT_SCHEMA if serving else fastavro.parse_schema(schema), record)
    return buf.getvalue()


def expected(spec: ModelSpec, tensors: dict[str, np.ndarray], query: dict[str, Any]) -> dict[str, Any]:
    """What the package computes for ``query``, step by step."""
    served = ServableModel(spec, tensors)
    items, n = query["items"], len(query["items"])
    context = {k: [v] * n for k, v in (query["context"] or {}).items()}
    rows = served.mapper.rows_for_ids([query["user"]] * n, items, context)
    inputs = None
    if spec.count_inputs:
        counted, at = rows[:, : served.counted], query["at_ms"]
        if isinstance(served.mapper, FeatureMapper):
            assert served.mapper.realtime is not None
            inputs = served.mapper.realtime.query(counted, np.full(n, at, np.int64))
        else:  # a serving form: from the rows present only
            inputs = compact_inputs(spec, Formula.from_dict(spec.extra["features"]), tensors, counted, at)
    names = [f.name.removeprefix("ctx.") for f in spec.fields[2:]]
    return {
        "keys": {
            "user": hash_id(query["user"]),
            "items": [hash_id(i) for i in items],
            "context": {
                k: hash_id(v) if v else MISSING_KEY for k, v in (query["context"] or {}).items() if k in names
            },
        },
        "rows": rows.tolist(),
        "inputs": None if inputs is None else inputs.astype(np.float64).tolist(),
        "logits": served.model.logits(rows, inputs).astype(np.float64).tolist(),
        "scores": served.score(query["user"], items, query["context"], at_ms=query["at_ms"])
        .astype(np.float64)
        .tolist(),
    }


def write(case: Case, directory: Path) -> None:
    spec, tensors, recent = state(case)
    value = envelope(case, spec, save(dict(sorted(tensors.items()))), recent)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "snapshot.bin").write_bytes(struct.pack(">I", len(value)) + value)
    queries = [{**q, "expected": expected(spec, tensors, q)} for q in case.queries]
    document = {"model": case.name, "version": 1, "kind": spec.kind, "queries": queries}
    (directory / "cases.json").write_text(_compact(json.dumps(document, indent=1)) + "\n")


def _compact(text: str) -> str:
    """Each list of numbers or strings on one line."""
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    for case in CASES:
        write(case, args.output / case.name)
        print(f"wrote {args.output / case.name}")


if __name__ == "__main__":
    main()
