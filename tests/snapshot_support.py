"""Helpers for tests that write snapshots to a real topic by hand (good ones and deliberately bad ones)."""

from __future__ import annotations

import io
import json
import time

import fastavro
import numpy as np
from confluent_kafka import KafkaError, Producer

from stream_learner.learning.models import FieldSpec, ModelSpec, build_model
from stream_learner.snapshots.format import (
    SNAPSHOT_SCHEMA,
    WRITER_SCHEMAS,
    SnapshotMeta,
    encode,
    encode_payload,
    read_envelope,
)

SNAPSHOT_TOPIC_CONFIG = {"max.message.bytes": str(2 << 20)}


def logistic_spec(rows: int = 64) -> ModelSpec:
    return ModelSpec(kind="logistic", fields=(FieldSpec("user", rows), FieldSpec("item", rows)))


def meta(
    model: str,
    version: int,
    kind: str = "FULL",
    spec: ModelSpec | None = None,
    recent_items: list[str] | None = None,
) -> SnapshotMeta:
    now = int(time.time() * 1000)
    state = {"learner": {"recent_items": recent_items or [f"i{k}" for k in range(20)]}}
    return SnapshotMeta(
        model_name=model,
        version=version,
        kind=kind,
        base_version=version - 1 if kind == "DELTA" else None,
        spec=(spec or logistic_spec()).to_json(),
        created_ms=now,
        window_start_ms=now - 1000,
        window_end_ms=now,
        newest_event_ms=now - 1,
        state=json.dumps(state),
    )


def logistic_state(spec: ModelSpec, value: float) -> dict[str, np.ndarray]:
    """Weights under which every score is sigmoid(0) = 0.5: rows all ``value``, bias -2 * value."""
    model = build_model(spec)
    tensors = {f"model.{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for name, tensor in tensors.items():
        tensor.fill(-2 * value if name == "model.bias" else value)
    return tensors


def logistic_delta(spec: ModelSpec, value: float) -> dict[str, np.ndarray]:
    """A delta that moves every row and the bias of a `logistic_state` to ``value``."""
    full = logistic_state(spec, value)
    out: dict[str, np.ndarray] = {"model.bias": full["model.bias"]}
    for f in spec.fields:
        out[f"delta.rows/{f.name}"] = np.arange(f.rows)
        name = f"model.embeddings.{f.name}.weight"
        out[f"delta.slice/{f.name}/{name}"] = full[name]
    return out


def messages(meta_: SnapshotMeta, tensors: dict[str, np.ndarray], max_bytes: int = 1 << 20) -> list[bytes]:
    return list(encode(meta_, encode_payload(tensors), max_bytes))


def produce_raw(bootstrap: str, topic: str, key: bytes, values: list[bytes]) -> None:
    """Write messages as they are (no transaction): what anyone with write access could do."""
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4 << 20, "linger.ms": 0})
    for value in values:
        producer.produce(topic, value=value, key=key, on_delivery=lambda err, _m: err and errors.append(err))
    assert producer.flush(30) == 0
    assert not errors, errors


def reencode(value: bytes, **changes: object) -> bytes:
    """The envelope ``value`` with some fields changed (as a forger would), in the layout of its
    (possibly changed) ``format_version``."""
    record = {**read_envelope(value), **changes}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, WRITER_SCHEMAS.get(record["format_version"], SNAPSHOT_SCHEMA), record)
    return buf.getvalue()
