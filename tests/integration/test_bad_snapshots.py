"""Bad snapshots on the real topic are refused with the reason (logged and counted), the subscriber keeps
serving the last good model, and nothing is ever unpickled."""

from __future__ import annotations

import hashlib
import logging
import pickle
import uuid

import numpy as np
from prometheus_client import CollectorRegistry

from stream_learner.config import KafkaSettings
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots.format import decode_chunk
from tests.snapshot_support import (
    SNAPSHOT_TOPIC_CONFIG,
    logistic_spec,
    logistic_state,
    messages,
    meta,
    produce_raw,
    reencode,
)
from tests.support import wait_for


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create the file


def test_bad_snapshots_are_refused_and_the_last_good_model_keeps_serving(
    kafka_bootstrap, new_topic, tmp_path, caplog
):
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    model = f"m-{uuid.uuid4().hex[:8]}"
    key = model.encode()
    spec = logistic_spec(rows=4096)  # ~33 kB payloads: several chunks at 8 kB
    small = 8 << 10

    def chunks(version: int, value: float) -> list[bytes]:
        return messages(meta(model, version, "FULL", spec), logistic_state(spec, value), small)

    marker = tmp_path / "unpickled"
    pickled = pickle.dumps({"model.bias": _Exploit(str(marker))})
    one_chunk = messages(meta(model, 2, "FULL", spec), logistic_state(spec, 0.7))
    assert len(one_chunk) == 1
    bad = {
        "checksum": chunks(2, 0.2),
        "missing_chunk": chunks(3, 0.3),
        "truncated": chunks(4, 0.4),
        "format_version": [reencode(one_chunk[0], version=5, format_version=99)],
        "not_safetensors": [
            reencode(
                one_chunk[0],
                version=2,
                payload=pickled,
                payload_size=len(pickled),
                payload_sha256=hashlib.sha256(pickled).hexdigest(),
            )
        ],
        # a forged spec that would need 2^40 rows per table: refused, nothing allocated
        "spec": [reencode(one_chunk[0], version=2, spec=logistic_spec(rows=1 << 40).to_json())],
    }
    flipped = bytearray(decode_chunk(bad["checksum"][1]).data)
    flipped[0] ^= 1
    bad["checksum"][1] = reencode(bad["checksum"][1], payload=bytes(flipped))
    del bad["missing_chunk"][1]
    last = decode_chunk(bad["truncated"][-1])
    bad["truncated"][-1] = reencode(bad["truncated"][-1], payload=last.data[:-100])
    assert len(bad["checksum"]) > 2 and len(bad["missing_chunk"]) > 1

    registry = CollectorRegistry()
    seen: list[int] = []
    produce_raw(kafka_bootstrap, topic, key, chunks(1, 0.1))
    caplog.set_level(logging.WARNING, logger="stream_learner")
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    with ModelSubscriber(
        settings, topic, model, registry, on_update=lambda m: seen.append(m.version)
    ) as subscriber:
        subscriber.start(wait=30)
        assert subscriber.version == 1

        def refused(reason: str) -> float | None:
            return registry.get_sample_value(
                "stream_learner_subscriber_snapshots_refused_total", {"model": model, "reason": reason}
            )

        for values in bad.values():
            produce_raw(kafka_bootstrap, topic, key, values)
        wait_for(lambda: all(refused(r) for r in bad), 30, "every bad snapshot to be refused")
        # still serving v1, weights and all
        assert subscriber.version == 1
        assert subscriber._served.fold.tensors["model.bias"].item() == np.float32(-0.2)  # type: ignore[union-attr]
        assert np.array_equal(subscriber.score("u1", ["i1", "i2"]), np.full(2, 0.5, np.float32))

        produce_raw(kafka_bootstrap, topic, key, one_chunk)  # a good one after, continuing v1
        assert subscriber.wait_for_version(2, 30)
        assert {reason: refused(reason) for reason in bad} == dict.fromkeys(bad, 1.0)
        assert not marker.exists(), "the pickle was unpickled"
        for reason in bad:
            assert any(f"({reason})" in r.getMessage() for r in caplog.records), reason
    assert seen == [1, 2]

    # a fresh subscriber reads back from the end: it finds v2 and never reads the bad ones
    with ModelSubscriber(settings, topic, model) as fresh:
        assert fresh.refresh() == 2
        assert fresh._served.fold.tensors["model.bias"].item() == np.float32(-1.4)  # type: ignore[union-attr]
