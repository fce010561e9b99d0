"""A model version as an ONNX graph, for onnxruntime in any language (``stream-learner snapshots export
--format onnx``).

The graph is the model's formula (`stream_learner.scoring.model`, docs/snapshot-format.md) over its
weights, which it holds as initializers:

- inputs ``rows`` (int64, (n, fields): each event's table row per field, in the spec's field order)
  and, for a model with real-time inputs, ``inputs`` (float32, (n, count_inputs));
- outputs ``logit`` and ``score`` = sigmoid(logit) (float32, (n,)).

The caller computes the rows (ids hashed with xxh64, or looked up in a dynamic table's keys) and the
real-time inputs as docs/snapshot-format.md specifies; the graph does the rest. Opset 17, IR
version 8: onnxruntime 1.13 and later (Java, Go, C#, C++, Python) load it. The spec and the version
travel in the model's metadata (``stream_learner.spec``, ``stream_learner.version``, ...). Needs the
``onnx`` package (the ``onnx`` extra); weights over 1 GiB go to a data file beside the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stream_learner.scoring.layout import state_shapes
from stream_learner.scoring.spec import ModelSpec, table_name
from stream_learner.snapshots.format import SnapshotMeta

OPSET = 17
IR_VERSION = 8
#: Weights larger than this are saved to a data file beside the model (protobuf's limit is 2 GiB).
EXTERNAL_BYTES = 1 << 30


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "exporting to ONNX needs the onnx package: pip install 'stream-learner[onnx]'"
        ) from None
    return onnx


class _Graph:
    """Nodes and initializers, with fresh names."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.nodes, self.weights = onnx, [], []  # type: ignore[var-annotated]
        self._count = 0

    def weight(self, name: str, value: np.ndarray) -> str:
        self.weights.append(self.onnx.numpy_helper.from_array(np.require(value, requirements="C"), name))
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        self._count += 1
        out = f"{kind.lower()}_{self._count}"
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), [out], **attributes))
        return out

    def column(self, values: str) -> str:
        """(n, 1) -> (n,)."""
        return self.op("Squeeze", values, self.weight(f"axis_{self._count}", np.array([1], np.int64)))

    def add_all(self, terms: list[str]) -> str:
        return terms[0] if len(terms) == 1 else self.op("Sum", *terms)


def build(spec: ModelSpec, tensors: Mapping[str, Any], meta: SnapshotMeta | None = None) -> Any:
    """The ONNX ``ModelProto`` of the model ``spec`` with the ``model.*`` weights of ``tensors``."""
    onnx = _onnx()
    g = _Graph(onnx)
    weights = {}
    for name, shape in state_shapes(spec).items():
        value = np.asarray(tensors[f"model.{name}"], np.float32)
        if value.shape != shape:
            raise ValueError(f"model.{name} is {value.shape}, the spec says {shape}")
        weights[name] = g.weight(name, value)
    rows = [  # (table, its rows: (n,))
        (table_name(f.name), g.op("Gather", "rows", g.weight(f"field_{i}", np.array(i, np.int64)), axis=1))
        for i, f in enumerate(spec.fields)
    ]
    vectors = [g.op("Gather", weights[f"embeddings.{t}.weight"], r, axis=0) for t, r in rows]
    axis = g.weight("axis", np.array([1], np.int64))
    terms = [weights["bias"]]  # (1,), broadcast
    if spec.count_inputs:
        terms.append(g.column(g.op("Gemm", "inputs", weights["count_head.weight"], transB=1)))
    if spec.kind == "logistic":
        terms.append(g.op("ReduceSum", g.add_all(vectors), axis, keepdims=0))
    else:
        first = [g.op("Gather", weights[f"linear.weights.{t}.weight"], r, axis=0) for t, r in rows]
        terms.append(g.op("ReduceSum", g.add_all(first), axis, keepdims=0))
        total = g.add_all(vectors)
        squares = g.add_all([g.op("Mul", v, v) for v in vectors])
        pairs = g.op("ReduceSum", g.op("Sub", g.op("Mul", total, total), squares), axis, keepdims=0)
        terms.append(g.op("Mul", pairs, g.weight("half", np.array(0.5, np.float32))))
        if spec.kind == "dnn":
            x = g.op("Concat", *vectors, axis=1)
            layers = len(spec.hidden) + 1
            for i in range(layers):
                x = g.op("Gemm", x, weights[f"mlp.{3 * i}.weight"], weights[f"mlp.{3 * i}.bias"], transB=1)
                if i < layers - 1:
                    x = g.op("Relu", x)
            terms.append(g.column(x))
    g.nodes.append(onnx.helper.make_node("Sum", terms, ["logit"]))
    g.nodes.append(onnx.helper.make_node("Sigmoid", ["logit"], ["score"]))
    n = "n"
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    inputs = [onnx.helper.make_tensor_value_info("rows", int64, [n, len(rows)])]
    if spec.count_inputs:
        inputs.append(onnx.helper.make_tensor_value_info("inputs", float32, [n, spec.count_inputs]))
    outputs = [onnx.helper.make_tensor_value_info(name, float32, [n]) for name in ("logit", "score")]
    graph = onnx.helper.make_graph(g.nodes, "stream_learner", inputs, outputs, g.weights)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="stream-learner"
    )
    model.ir_version = IR_VERSION
    about = {
        "stream_learner.spec": spec.to_json(),
        "stream_learner.fields": ",".join(f.name for f in spec.fields),
    }
    if meta is not None:
        about |= {
            "stream_learner.model": meta.model_name,
            "stream_learner.version": str(meta.version),
            "stream_learner.newest_event_ms": str(meta.newest_event_ms),
        }
    onnx.helper.set_model_props(model, about)
    onnx.checker.check_model(model)
    return model


def save(model: Any, path: Path) -> None:
    """Write ``model`` to ``path``; its weights to ``path``.data beside it when they are too large
    for one protobuf."""
    onnx = _onnx()
    external = sum(w.ByteSize() for w in model.graph.initializer) > EXTERNAL_BYTES
    onnx.save_model(model, str(path), save_as_external_data=external, location=f"{path.name}.data")
