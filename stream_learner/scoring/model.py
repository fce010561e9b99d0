"""Scores of every model kind in numpy: the formulas of `stream_learner.learning.models` for a
state's weights, with neither torch nor autograd.

With v_f the row of field f in its ``embeddings`` table, w_f its ``linear.weights`` entry, x the
real-time inputs and c the ``count_head`` weights (0 for a model without them):

- logistic: bias + sum_f v_f + c . x (its tables are one wide);
- fm: bias + sum_f w_f + 1/2 sum_d ((sum_f v_f)^2 - sum_f v_f^2) + c . x;
- dnn (DeepFM): the fm logit + MLP(v_1 ... v_F concatenated): Linear, ReLU per hidden layer (dropout
  is off when scoring), then Linear to one output.

The score is sigmoid(logit). Computed in float32, as the torch model computes it; only the order in
which floats are added differs, which moves a score by less than 1e-6.

The tables may be a serving form's (`stream_learner.scoring.compact`): only the rows present, at
float32, float16 or int8 with per-row scales; the rows an event needs are looked up and
dequantised, the tables are never expanded, and an absent row is zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stream_learner.scoring import compact
from stream_learner.scoring.layout import DTYPE, state_shapes
from stream_learner.scoring.spec import ModelSpec, table_name

PREFIX = compact.PREFIX


class NumpyModel:
    """The model of ``spec`` over the ``model.*`` weights of a state (a training state's, or a
    serving form's). It reads them from ``tensors`` at every call, so a delta applied to that state
    changes the scores."""

    def __init__(self, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
        """Raises ValueError when a weight of the spec is missing or not float32 of its shape (not
        of the serving form's layout, for a serving form)."""
        self.compact = compact.is_compact(tensors)
        problems = compact.problems(spec, tensors) if self.compact else []
        shapes = {} if self.compact else state_shapes(spec)
        for name, shape in shapes.items():
            value = tensors.get(PREFIX + name)
            if value is None:
                problems.append(f"missing {PREFIX}{name}")
            elif value.dtype != DTYPE or value.shape != shape:
                problems.append(f"{PREFIX}{name} is {value.dtype}{value.shape}, not {DTYPE}{shape}")
        if problems:
            raise ValueError("the tensors are not those of the model spec: " + "; ".join(problems[:5]))
        self.spec = spec
        self._tensors = tensors
        self._tables = [table_name(f.name) for f in spec.fields]

    def _weight(self, name: str) -> np.ndarray:
        return self._tensors[PREFIX + name]

    def _rows(self, table: str, field: int, rows: np.ndarray, where: list | None) -> np.ndarray:
        """(n, width) float32 rows of ``table`` (``embeddings`` or ``linear.weights``) of a field
        (``where``: a serving form's positions of each field's rows)."""
        name = f"{table}.{self._tables[field]}.weight"
        if where is not None:
            return compact.gather(self._tensors, self._tables[field], PREFIX + name, rows, where=where[field])
        return self._weight(name)[rows]

    def _where(self, rows: np.ndarray) -> list | None:
        """A serving form's positions of each field's rows (found once for all its tables)."""
        if not self.compact:
            return None
        return [
            compact.positions(self._tensors[compact.rows_name(t)], rows[:, i])
            for i, t in enumerate(self._tables)
        ]

    def logits(self, rows: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        """The logit of each event of (n, fields) table ``rows`` (float32), with its (n, width)
        real-time ``inputs`` when the model takes them."""
        rows = np.asarray(rows, np.int64)
        where = self._where(rows)
        vectors = np.stack(
            [self._rows("embeddings", i, rows[:, i], where) for i in range(len(self._tables))], axis=1
        )  # (n, fields, dim)
        logit = self._weight("bias")[0] + self._count_logit(inputs, len(rows))
        if self.spec.kind == "logistic":
            return logit + vectors.sum(axis=(1, 2))
        first = sum(
            self._rows("linear.weights", i, rows[:, i], where)[:, 0] for i in range(len(self._tables))
        )
        total = vectors.sum(axis=1)
        interaction = 0.5 * (np.square(total) - np.square(vectors).sum(axis=1)).sum(axis=1)
        logit = logit + first + interaction
        if self.spec.kind == "dnn":
            logit = logit + self._mlp(vectors.reshape(len(rows), -1))
        return logit

    def scores(self, rows: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        """sigmoid(`logits`), float32."""
        logit = self.logits(rows, inputs).astype(np.float64)
        small = np.exp(-np.abs(logit))  # no overflow, and full precision far from 0.5 on either side
        return np.where(logit >= 0, 1.0 / (1.0 + small), small / (1.0 + small)).astype(np.float32)

    def _count_logit(self, inputs: np.ndarray | None, n: int) -> np.ndarray:
        if not self.spec.count_inputs:
            return np.zeros(n, DTYPE)
        if inputs is None:
            raise ValueError("the model takes count inputs (model.count_features) and none were given")
        return (np.asarray(inputs, DTYPE) @ self._weight("count_head.weight")[0]).astype(DTYPE)

    def _mlp(self, x: np.ndarray) -> np.ndarray:
        layers = len(self.spec.hidden) + 1
        for i in range(layers):
            x = x @ self._weight(f"mlp.{3 * i}.weight").T + self._weight(f"mlp.{3 * i}.bias")
            if i < layers - 1:
                x = np.maximum(x, 0)
        return x[:, 0]
