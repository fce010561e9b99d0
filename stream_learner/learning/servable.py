"""A trained model for scoring only: built from a snapshot's spec and tensors.

`ServableModel` wraps the model (inference mode, dense embeddings) and the id mapping of a model
state, and scores raw ids. It *shares* the state's ``model.*`` tensors: after construction they are
the model's own parameters, so a delta applied to the state in place changes the model (the caller
then calls `refresh_features` when the delta carried id-table state).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.models import ModelSpec, RecModel, build_model

#: Real-time inputs of (n, counted) rows at a time in ms, from features kept current elsewhere; None
#: when they have none yet.
Inputs = Callable[[np.ndarray, int], np.ndarray | None]


class ServableModel:
    """Scores (user, item, context) ids with the model a state describes."""

    def __init__(self, spec: ModelSpec, state: dict[str, torch.Tensor]) -> None:
        """Build the model of ``spec`` from ``state`` (``model.*`` and ``features.*`` tensors, as a
        snapshot carries them); ``state``'s model tensors are replaced by the model's own. Raises
        ValueError when the tensors do not fit the spec."""
        params = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        self.spec = spec
        self.model: RecModel = build_model(spec, sparse=False)
        try:
            self.model.load_state_dict(params, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the tensors are not those of the model spec: {exc}") from None
        self.model.eval().requires_grad_(False)
        state.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        self._state = state
        self.mapper = FeatureMapper.from_spec(spec, self._features())

    def _features(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._state.items() if k.startswith("features.")}

    def refresh_features(self, realtime: bool = True) -> None:
        """Rebuild the id mapping from the state's ``features.*`` tensors (after they changed); the
        real-time features too with ``realtime`` (without, they stay as they were: for a caller that
        keeps its own current, `score`'s ``inputs``)."""
        kept = self.mapper.realtime
        self.mapper = FeatureMapper.from_spec(self.spec, self._features(), realtime)
        if not realtime:
            self.mapper.realtime = kept

    def score(
        self,
        user_id: str,
        item_ids: Sequence[str],
        context: Mapping[str, str] | None = None,
        *,
        at_ms: int | None = None,
        inputs: Inputs | None = None,
    ) -> np.ndarray:
        """Click probability of each item for the user (float32). A model with real-time inputs
        takes them as of ``at_ms`` (default: now) from ``inputs`` when it gives them, else from the
        state's own features (those of the snapshot)."""
        n = len(item_ids)
        ctx = {name: [value] * n for name, value in (context or {}).items()}
        rows = self.mapper.rows_for_ids([user_id] * n, list(item_ids), ctx)
        x = None
        if self.mapper.realtime is not None:
            at = int(time.time() * 1000) if at_ms is None else int(at_ms)
            counted = rows[:, : self.mapper.counted]
            x = inputs(counted, at) if inputs is not None else None
            if x is None:
                x = self.mapper.realtime.query(counted, np.full(n, at, np.int64))
        with torch.no_grad():
            logits = self.model(torch.from_numpy(rows), None if x is None else torch.from_numpy(x))
        return torch.sigmoid(logits.float()).numpy()
