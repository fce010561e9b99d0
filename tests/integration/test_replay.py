"""Bit-exact replay through the real broker: a deterministic CPU run over three partitions, then a
delta version and the first full version trained again from the input topic equal their payloads
byte for byte, as does a later full version (the state of the delta before it) rebuilt from its
base; a copy of the history whose last payload was tampered with is reported with the tensor's
name; and once retention removed the input offsets, the replay says so."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from stream_learner.cli import main
from stream_learner.kafka.ranges import OffsetsGone
from stream_learner.snapshots.format import encode, encode_payload
from stream_learner.snapshots.replay import replay
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.snapshot_support import SNAPSHOT_TOPIC_CONFIG, produce_raw
from tests.support import AppThread, learner_settings, read_snapshots

EVENTS = 12_000
PARTITIONS = 3
TAMPERED = "model.count_head.weight"  # the default model (fm with count inputs) has few dense weights
COUNTS = tuple(f"features.{f}.{a}" for f in ("user", "item") for a in ("sums", "labels_ms"))


def test_versions_replay_byte_for_byte_and_differences_name_the_tensor(
    kafka_bootstrap, new_topic, tmp_path, capsys
):
    topic = new_topic("replay-events", partitions=PARTITIONS)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        train={"device": "cpu", "deterministic": True, "batch_size": 128},
        snapshot={"every_windows": 2, "full_every": 2},
        model={"context_fields": ["device"]},
    )
    # events from three partitions interleave in every window, and (backfilled at 1500/s into
    # one-second windows) each snapshot adds two windows of about 3000 events
    produce_synthetic(settings.kafka, topic, EVENTS, rate=1500, backfill=True, config=SyntheticConfig(seed=3))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(180)
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    lineages = {s.meta.version: s.meta.state_dict()["lineage"] for s in snapshots}
    trained = [s for s in snapshots if lineages[s.meta.version]["windows"]]
    delta = next(s for s in trained if s.meta.kind == "DELTA")
    # after v1, a full snapshot is the whole state of the delta version before it (it adds no window)
    full = next(s for s in snapshots if s.meta.kind == "FULL" and s.meta.version > 1)
    assert not lineages[full.meta.version]["windows"] and snapshots[0].meta.kind == "FULL"
    assert len({r.partition for r in delta.meta.offsets if r.last >= r.first}) == PARTITIONS
    assert float(full.tensors()["features.user.sums"][:, 0].sum()) > 0  # counted: model.count_features

    for snap in (delta, full, snapshots[0]):
        # the per-id counts are state too: the payloads compared hold them (sliced by rows in deltas)
        names = snap.tensors()
        assert all(any(n == c or n.endswith(f"/{c}") for n in names) for c in COUNTS), sorted(names)
        report = replay(settings, snap.meta.version)
        assert report.identical, report
        assert report.windows == len(lineages[snap.meta.version]["windows"])
        assert snap is full or report.events > 1000
    assert replay(settings, full.meta.version).base == full.meta.version - 1

    # a history whose newest payload differs in one tensor: the replay names it
    forged_topic = new_topic("forged-snapshots", config=SNAPSHOT_TOPIC_CONFIG)
    last = snapshots[-1]
    values: list[bytes] = []
    for snap in snapshots:
        tensors = snap.tensors()
        if snap is last:
            tensors[TAMPERED].reshape(-1)[0] += 1e-3  # a dense weight: whole in deltas too (a view)
        values += encode(snap.meta, encode_payload(tensors), 1 << 20)
    produce_raw(kafka_bootstrap, forged_topic, settings.model.name.encode(), values)
    config = tmp_path / "forged.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n[input]\ntopic = "{topic}"\n'
        f'[snapshot]\ntopic = "{forged_topic}"\n[model]\nname = "{settings.model.name}"\n'
    )
    assert main(["replay", "--config", str(config), "--version", str(last.meta.version)]) == 5
    out = capsys.readouterr().out
    assert f"DIFFERS: tensor {TAMPERED}: 1 of" in out, out

    # retention removes the first offsets of a partition: the replay says so, and which
    first = min((r for r in delta.meta.offsets if r.last >= r.first), key=lambda r: r.partition)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    gone = TopicPartition(topic, first.partition, first.first + 1)
    admin.delete_records([gone])[gone].result(30)
    try:
        replay(settings, delta.meta.version)
    except OffsetsGone as err:
        message = str(err)
    else:
        raise AssertionError("a replay of deleted offsets did not fail")
    assert f"{topic}[{first.partition}]: offsets {first.first}..{first.first}" in message
    assert "retention" in message
    assert main(["replay", "--config", str(config), "--version", str(delta.meta.version)]) == 1
    assert "cannot be replayed" in capsys.readouterr().err


def test_windows_trained_in_catch_up_mode_replay_with_their_multiplier(kafka_bootstrap, new_topic):
    """Catch-up from the first look at the lag until none is left: the windows trained meanwhile
    record mini-batches x4 in their lineage, the learner leaves catch-up, and replay reproduces it."""
    topic = new_topic("catchup-events", partitions=2)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        train={"device": "cpu", "deterministic": True, "batch_size": 64},
        snapshot={"every_windows": 1, "full_every": 4},
        catchup={
            "enabled": True,
            "enter_records": 1,
            "exit_records": 0,
            "exit_seconds": 0,
            "batch_multiplier": 4,
            "snapshot_factor": 2,
        },
    )
    produce_synthetic(settings.kafka, topic, 30_000, rate=1500, backfill=True, config=SyntheticConfig(seed=8))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(300)
    assert run.app.registry.get_sample_value("stream_learner_catchup_mode") == 0  # caught up
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    multipliers = {
        s.meta.version: {w["batch_multiplier"] for w in s.meta.state_dict()["lineage"]["windows"]}
        for s in snapshots
    }
    caught_up = [v for v, m in multipliers.items() if 4 in m]
    assert caught_up, multipliers
    report = replay(settings, caught_up[-1])
    assert report.identical and report.windows >= 1, report
