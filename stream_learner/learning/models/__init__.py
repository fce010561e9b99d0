"""Model zoo: every model follows the `RecModel` contract in `base`."""

from __future__ import annotations

from stream_learner.learning.models.base import RecModel
from stream_learner.learning.models.dnn import DeepFM
from stream_learner.learning.models.fm import FM
from stream_learner.learning.models.logistic import Logistic
from stream_learner.scoring.spec import FieldSpec, ModelSpec

MODELS: dict[str, type[RecModel]] = {"logistic": Logistic, "fm": FM, "dnn": DeepFM}


def build_model(spec: ModelSpec, sparse: bool = True) -> RecModel:
    """A freshly initialised model of ``spec.kind`` (initialised from torch's global generator)."""
    try:
        cls = MODELS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown model kind {spec.kind!r}; known: {sorted(MODELS)}") from None
    return cls(spec, sparse=sparse)  # type: ignore[call-arg]


__all__ = ["MODELS", "FieldSpec", "ModelSpec", "RecModel", "build_model"]
