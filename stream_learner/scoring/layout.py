"""The tensors of each model kind: name -> shape of every weight a model of a spec holds.

Names are those of the torch model's ``state_dict`` (`stream_learner.learning.models`; a snapshot
carries them under ``model.``); every weight is float32. Worked out from the spec alone, so a forged
spec cannot make a reader allocate anything.
"""

from __future__ import annotations

import numpy as np

from stream_learner.scoring.spec import ModelSpec, table_name

#: The dtype of every model weight.
DTYPE = np.dtype(np.float32)
KINDS = ("logistic", "fm", "dnn")


def state_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of the model ``spec`` describes. Raises ValueError for an
    unknown kind or a size that is not positive."""
    if spec.kind not in KINDS:
        raise ValueError(f"unknown model kind {spec.kind!r}; known: {sorted(KINDS)}")
    sizes = [f.rows for f in spec.fields] + [spec.embedding_dim, *spec.hidden]
    if not spec.fields or any(not isinstance(s, int) or s < 1 for s in sizes) or spec.count_inputs < 0:
        raise ValueError(f"the spec's sizes are not positive: fields {spec.fields}, sizes {sizes[1:]}")
    dim = 1 if spec.kind == "logistic" else spec.embedding_dim
    shapes: dict[str, tuple[int, ...]] = {"bias": (1,)}
    for f in spec.fields:
        shapes[f"embeddings.{table_name(f.name)}.weight"] = (f.rows, dim)
        if spec.kind != "logistic":
            shapes[f"linear.weights.{table_name(f.name)}.weight"] = (f.rows, 1)
    if spec.count_inputs:
        shapes["count_head.weight"] = (1, spec.count_inputs)
    if spec.kind == "dnn":
        width = len(spec.fields) * spec.embedding_dim
        for i, out in enumerate([*spec.hidden, 1]):
            shapes[f"mlp.{3 * i}.weight"] = (out, width)  # Linear, ReLU, Dropout per hidden layer
            shapes[f"mlp.{3 * i}.bias"] = (out,)
            width = out
    return shapes
