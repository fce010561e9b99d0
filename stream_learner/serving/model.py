"""A trained model for scoring only, in numpy: built from a snapshot's spec and arrays.

`ServableModel` maps raw ids to table rows with the snapshot's id mapping
(`stream_learner.learning.features`), takes the real-time inputs from features kept current
elsewhere (the input follower) or from the snapshot's own, and scores with `NumpyModel`. It *shares*
the state's ``model.*`` arrays: a delta applied to the state in place changes the model (the caller
then calls `refresh_features` when the delta carried id-table state). A serving form's state
(`stream_learner.scoring.compact`) is read as it is: ids through `CompactIds`, inputs through
`compact_inputs`, nothing expanded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.realtime import Formula
from stream_learner.scoring.model import NumpyModel
from stream_learner.scoring.spec import ModelSpec
from stream_learner.serving.compact import CompactIds, compact_inputs

#: Real-time inputs of (n, counted) rows at a time in ms, from features kept current elsewhere; None
#: when they have none yet.
Inputs = Callable[[np.ndarray, int], np.ndarray | None]


class ServableModel:
    """Scores (user, item, context) ids with the model a state describes."""

    def __init__(self, spec: ModelSpec, state: Mapping[str, np.ndarray], realtime: bool = True) -> None:
        """The model of ``spec`` over ``state`` (``model.*`` and ``features.*`` arrays, as a snapshot
        carries them); without ``realtime`` the snapshot's real-time features are not loaded (a
        caller that keeps its own current passes `score` its ``inputs``). Raises ValueError when
        the arrays do not fit the spec."""
        self.spec = spec
        self.model = NumpyModel(spec, state)
        self._state = state
        self.counted = len(spec.extra.get("count_fields", []))  # fields the real-time inputs count
        self._own = realtime  # the snapshot's real-time features answer (else the caller's)
        self._formula: Formula | None = None  # a serving form's real-time constants, once read
        self.mapper: FeatureMapper | CompactIds = self._mapper(realtime)

    def _mapper(self, realtime: bool) -> FeatureMapper | CompactIds:
        if self.model.compact:
            try:
                return CompactIds(self.spec, self._state)
            except KeyError as exc:
                raise ValueError(f"the serving form lacks {exc}") from None
        return FeatureMapper.from_spec(self.spec, self._features(), realtime)

    def _features(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self._state.items() if k.startswith("features.")}

    def refresh_features(self, realtime: bool = True) -> None:
        """Rebuild the id mapping from the state's ``features.*`` arrays (after they changed); the
        real-time features too with ``realtime`` (without, they stay as they were)."""
        if not isinstance(self.mapper, FeatureMapper):
            self.mapper = self._mapper(realtime)
            return
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
        state's own features (those of the snapshot, when loaded: `LookupError` otherwise)."""
        n = len(item_ids)
        ctx = {name: [value] * n for name, value in (context or {}).items()}
        rows = self.mapper.rows_for_ids([user_id] * n, list(item_ids), ctx)
        x = None
        if self.counted:
            at = int(time.time() * 1000) if at_ms is None else int(at_ms)
            counted = rows[:, : self.counted]
            x = inputs(counted, at) if inputs is not None else None
            if x is None:
                x = self._own_inputs(counted, at)
        return self.model.scores(rows, x)

    def _own_inputs(self, rows: np.ndarray, at_ms: int) -> np.ndarray:
        """The real-time inputs of (n, counted) ``rows`` from the snapshot's features."""
        if not isinstance(self.mapper, FeatureMapper):
            if not self._own:
                raise LookupError("the model's real-time features are kept elsewhere and have none yet")
            if self._formula is None:
                self._formula = Formula.from_dict(self.spec.extra["features"])
            return compact_inputs(self.spec, self._formula, self._state, rows, at_ms)
        if self.mapper.realtime is None:
            raise LookupError("the model's real-time features are kept elsewhere and have none yet")
        return self.mapper.realtime.query(rows, np.full(len(rows), at_ms, np.int64))
