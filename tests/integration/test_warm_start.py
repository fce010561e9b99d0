"""Warm start through the real job and broker: a new deployment starts from a snapshot file or from
pretrained tables, trains on the input topic and publishes snapshots that carry what it started from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from stream_learner.config import Settings
from stream_learner.errors import WarmStartError
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner
from stream_learner.runtime.app import App
from stream_learner.snapshots.format import SnapshotMeta, encode, encode_payload
from stream_learner.snapshots.recovery import Checkpoints
from stream_learner.snapshots.state import arrays
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream
from tests.support import AppThread, learner_settings, read_snapshots

EVENTS = 3_000


def _settings(bootstrap: str, topic: str, **warm_start: object) -> Settings:
    return learner_settings(
        bootstrap,
        topic,
        model={"kind": "fm", "embedding_dim": 4},
        window={"idle_timeout_seconds": 1.0},
        snapshot={"full_every": 1},  # every snapshot full: the newest holds every weight
        warm_start=dict(warm_start),
    )


def _snapshot_file(settings: Settings, folder: Path) -> tuple[Path, Learner]:
    """A full snapshot of a learner trained on two windows, as a checkpoint file."""
    learner = Learner(settings)
    stream = SyntheticStream(SyntheticConfig(seed=9))
    for w in range(2):
        events = stream.batch(1_000, w * 1_000, 1).events()
        learner.process(Window(w * 1_000, (w + 1) * 1_000, events, {}, "count"))
    meta = SnapshotMeta(
        model_name="elsewhere",
        version=7,
        kind="FULL",
        spec=learner.spec.to_json(),
        created_ms=0,
        window_start_ms=0,
        window_end_ms=2_000,
        newest_event_ms=1_999,
        state=json.dumps({"learner": learner.state()}),
    )
    checkpoints = Checkpoints(folder, "elsewhere")
    checkpoints.write(meta, encode(meta, encode_payload(arrays(learner.tensors())), 1 << 20))
    (path,) = checkpoints.dir.glob("*.snapshot")
    return path, learner


def test_a_new_model_starts_from_a_snapshot_file(kafka_bootstrap, new_topic, tmp_path) -> None:
    topic = new_topic("warm-file", partitions=2)
    probe = _settings(kafka_bootstrap, topic)
    produce_synthetic(probe.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=4))
    path, source = _snapshot_file(probe, tmp_path)
    settings = _settings(kafka_bootstrap, topic, source="file", path=str(path))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(180)

    newest = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1]
    learner_state = newest.meta.state_dict()["learner"]
    assert learner_state["events_trained"] == source.events_trained + EVENTS
    # Rows no event of this run touched still hold the file's weights; the others were trained on.
    tensors = newest.tensors()
    file_items = source.tensors()["model.embeddings.item.weight"].numpy()
    run_items = tensors["model.embeddings.item.weight"]
    same_rows = (file_items == run_items).all(axis=1)
    assert same_rows.any() and not same_rows.all()


def test_pretrained_tables_initialise_a_new_model(kafka_bootstrap, new_topic, tmp_path) -> None:
    topic = new_topic("warm-pre", partitions=1)
    probe = _settings(kafka_bootstrap, topic)
    produce_synthetic(probe.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=5))
    rows, dim = 1 << 10, 4  # learner_settings: item_buckets 1 << 10
    pretrained = torch.randn(rows, dim)
    path = tmp_path / "items.safetensors"
    save_file({"embeddings.item": pretrained}, str(path))
    settings = _settings(kafka_bootstrap, topic, pretrained=str(path))
    assert probe.model.item_buckets == rows
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(180)

    tensors = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1].tensors()
    items = tensors["model.embeddings.item.weight"]
    untouched = (items == pretrained.numpy()).all(axis=1)
    assert untouched.sum() > rows // 2  # 1,000 synthetic items hit at most ~650 of 1,024 rows
    assert not untouched.all()  # and the rows trained moved away from their initial values
    assert np.isfinite(items).all()


def test_a_misfit_pretrained_file_stops_the_job_before_any_input(
    kafka_bootstrap, new_topic, tmp_path
) -> None:
    topic = new_topic("warm-bad", partitions=1)
    path = tmp_path / "bad.safetensors"
    save_file({"embeddings.item": torch.zeros(3, 4)}, str(path))
    app = App(_settings(kafka_bootstrap, topic, pretrained=str(path)))
    with pytest.raises(WarmStartError, match=r"embeddings.item has shape \(3, 4\)"):
        app.run(exit_when_idle=True)
    assert app.summary.events == 0


def test_source_none_starts_over_in_place_above_the_old_versions(kafka_bootstrap, new_topic) -> None:
    topic = new_topic("warm-none", partitions=1)
    settings = _settings(kafka_bootstrap, topic)
    produce_synthetic(settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=5))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(180)
    before = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    produce_synthetic(settings.kafka, topic, 1_000, rate=1000, backfill=True, config=SyntheticConfig(seed=6))
    fresh = settings.model_copy(
        update={"warm_start": settings.warm_start.model_copy(update={"source": "none"})}
    )
    with AppThread(fresh, exit_when_idle=True) as run:
        run.join(180)
    after = read_snapshots(kafka_bootstrap, settings.snapshot.topic)[len(before) :]
    assert after and after[0].meta.version == before[-1].meta.version + 1 and after[0].meta.kind == "FULL"
    # A fresh model trained only on the events after the committed offsets, not on the old ones.
    assert after[-1].meta.state_dict()["learner"]["events_trained"] == 1_000
    assert before[-1].meta.state_dict()["learner"]["events_trained"] == EVENTS
