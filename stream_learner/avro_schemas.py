"""The bundled Avro schemas (``schemas/*.avsc``, shipped inside the wheel), read by name."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

SchemaName = Literal["user_event", "model_snapshot"]


def load_schema(name: SchemaName) -> dict[str, Any]:
    """A bundled Avro schema as parsed JSON."""
    text = resources.files("stream_learner").joinpath("schemas", f"{name}.avsc").read_text()
    return json.loads(text)
