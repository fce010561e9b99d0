"""The Avro schemas ship inside the package and parse; events round-trip through them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import fastavro
import pytest

from stream_learner.avro_schemas import load_schema
from stream_learner.ingest.codec import encode_event

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("name", ["user_event", "model_snapshot"])
def test_schema_is_shipped_in_the_package_and_parses(name):
    text = resources.files("stream_learner").joinpath("schemas", f"{name}.avsc").read_text()
    parsed = fastavro.parse_schema(json.loads(text))
    assert parsed["type"] == "record"
    assert json.loads(text) == json.loads((REPO_SCHEMAS / f"{name}.avsc").read_text())


def test_user_event_round_trips():
    import io

    event = {
        "user_id": "u1",
        "item_id": "i9",
        "event_type": "purchase",
        "timestamp": 1_700_000_000_000,
        "label": 0.5,
        "context": {"device": "ios"},
    }
    back = fastavro.schemaless_reader(
        io.BytesIO(encode_event(event)), fastavro.parse_schema(load_schema("user_event")), None
    )
    assert back == event
