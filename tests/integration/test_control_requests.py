"""Hostile and unsigned records on the control topic, against a running learner that signs.

Issue 22: ``b"[" * 200000`` keyed by the model name crash-looped the learner (``RecursionError``
in the request parser), and a plain producer's rollback request rolled a signing learner back. Here
the learner reads both, skips them with their reasons counted, keeps training and committing, and
then applies a rollback that ``stream-learner rollback`` signs with the signing key.
"""

from __future__ import annotations

import json
import time

from confluent_kafka import Producer

from stream_learner.cli import main
from stream_learner.kafka.control import SIGNATURE_HEADER, control_topic, signed_message
from stream_learner.snapshots.signing import Signer, generate, private_key
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import (
    AppThread,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_snapshots,
    wait_for,
)

REFUSED = "stream_learner_control_requests_refused_total"


def _write(bootstrap: str, topic: str, key: bytes, value: bytes, headers: list | None = None) -> int:
    """Write one record as any producer could (no signing key); return its offset."""
    offsets: list[int] = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 1 << 20})
    producer.produce(
        topic, key=key, value=value, headers=headers, on_delivery=lambda err, m: offsets.append(m.offset())
    )
    assert producer.flush(30) == 0 and offsets
    return offsets[0]


def _request(to_version: int) -> bytes:
    now = int(time.time() * 1000)
    body = {"action": "rollback", "to_version": to_version, "request": "x", "requested_ms": now}
    return json.dumps({**body, "expires_ms": now + 600_000}).encode()


def test_hostile_and_unsigned_control_records_are_skipped_and_a_signed_rollback_applies(
    kafka_bootstrap, new_topic, tmp_path, monkeypatch, capsys
):
    topic = new_topic("events", partitions=1)
    private, public = generate()
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        model={"kind": "logistic"},
        window={"kind": "count", "count": 500},
        snapshot={"every_windows": 1, "full_every": 2, "signing_key": private, "require_signature": True},
    )
    group, key = settings.input.group_id, settings.model.name.encode()
    control = control_topic(settings)

    def produce_and_wait(seed: int) -> None:
        produce_synthetic(settings.kafka, topic, 2000, rate=4000, config=SyntheticConfig(seed=seed))
        ends = end_offsets(kafka_bootstrap, topic, 1)
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == ends, 120, "the commits")

    with AppThread(settings) as run:
        produce_and_wait(seed=1)
        registry = run.app.registry
        other = Signer(private_key(generate()[0]))
        records = [
            (b"[" * 200_000, None),
            (_request(2), None),  # a plain producer's rollback
            (_request(2), [(SIGNATURE_HEADER, other(signed_message(key, _request(2))))]),  # another key
        ]
        last = max(_write(kafka_bootstrap, control, key, value, headers) for value, headers in records)

        def recorded_past_them() -> bool:
            snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
            return snapshots[-1].meta.state_dict().get("control", {}).get("next", 0) > last

        wait_for(recorded_past_them, 60, "a snapshot that records the control position past the records")
        assert registry.get_sample_value(REFUSED, {"reason": "too_large"}) == 1
        assert registry.get_sample_value(REFUSED, {"reason": "signature"}) == 2
        assert registry.get_sample_value("stream_learner_rollbacks_total", {"result": "applied"}) == 0
        snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
        assert not any("rollback" in s.meta.state_dict() for s in snapshots), "an unsigned request applied"

        produce_and_wait(seed=2)  # still learning and committing
        config = tmp_path / "operator.toml"
        config.write_text(
            f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n[input]\ntopic = "{topic}"\n'
            f'[snapshot]\ntopic = "{settings.snapshot.topic}"\nverify_key = "{public}"\n'
            f'require_signature = true\n[model]\nname = "{settings.model.name}"\n'
        )
        rollback = ["rollback", "--config", str(config), "--to-version", "2", "--wait", "60"]
        assert main(rollback) == 2, "an operator without the signing key is told at once"
        monkeypatch.setenv("STREAM_LEARNER_SNAPSHOT__SIGNING_KEY", private)
        capsys.readouterr()
        assert main(rollback) == 0
        assert "carries the state of v2" in capsys.readouterr().out
        assert registry.get_sample_value("stream_learner_rollbacks_total", {"result": "applied"}) == 1
        summary = run.stop()
    assert summary.windows_trained == 8
