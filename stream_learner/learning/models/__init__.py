"""Model zoo: every model follows the `RecModel` contract in `base`."""

from __future__ import annotations

import torch

from stream_learner.learning.models.base import FieldSpec, ModelSpec, RecModel
from stream_learner.learning.models.dnn import DeepFM
from stream_learner.learning.models.fm import FM
from stream_learner.learning.models.logistic import Logistic

MODELS: dict[str, type[RecModel]] = {"logistic": Logistic, "fm": FM, "dnn": DeepFM}


def build_model(spec: ModelSpec, sparse: bool = True) -> RecModel:
    """A freshly initialised model of ``spec.kind`` (initialised from torch's global generator)."""
    try:
        cls = MODELS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown model kind {spec.kind!r}; known: {sorted(MODELS)}") from None
    return cls(spec, sparse=sparse)  # type: ignore[call-arg]


def state_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of the model ``spec`` builds (worked out on
    the meta device: nothing is allocated, so a forged spec cannot exhaust memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(spec, sparse=False).state_dict().items()}


__all__ = ["MODELS", "FieldSpec", "ModelSpec", "RecModel", "build_model", "state_shapes"]
