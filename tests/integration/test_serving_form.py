"""The serving form through the real broker: a learner with ``serving.publish_form`` publishes every
version twice, in the same transactions (the same versions, kinds and offsets on both topics), signed;
a subscriber with the public key follows the serving form and scores as one following the training
snapshots does; and a learner told to restore from the serving form's topic refuses it ("form") and
starts afresh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from stream_learner.config import Settings
from stream_learner.ingest.windowing import make_windower
from stream_learner.learning.learner import Learner
from stream_learner.serving import ModelSubscriber
from stream_learner.snapshots import signing
from stream_learner.snapshots.recovery import restore
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.support import AppThread, learner_settings, read_snapshots

EVENTS = 4_000
ITEMS = [f"i{k}" for k in range(50)]


def _settings(bootstrap: str, topic: str, private: str, public: str) -> Settings:
    return learner_settings(
        bootstrap,
        topic,
        model={"kind": "fm", "embedding_dim": 8},
        snapshot={"every_windows": 1, "full_every": 3, "signing_key": private, "verify_key": public},
        serving={"publish_form": True, "precision": "int8"},
    )


def _subscriber(settings: Settings, topic: str, public: str) -> ModelSubscriber:
    return ModelSubscriber(
        settings.kafka,
        topic,
        settings.model.name,
        registry=CollectorRegistry(),
        verify_key=public,
        require_signature=True,
        follow_input=False,
    )


def _cli(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream_learner", "--log-level", "WARNING", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_serving_form_is_published_with_each_version_and_served(
    kafka_bootstrap: str, new_topic, tmp_path: Path
) -> None:
    private, public = signing.generate()
    topic = new_topic("events", partitions=2)
    settings = _settings(kafka_bootstrap, topic, private, public)
    produce_synthetic(settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=4))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(120)
    form_topic = settings.serving.form_topic_for(settings.snapshot.topic)
    training = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    serving = read_snapshots(kafka_bootstrap, form_topic)
    assert len(training) >= 4
    assert [s.meta.form for s in serving] == ["serving"] * len(training)
    for a, b in zip(training, serving, strict=True):
        assert (a.meta.version, a.meta.kind, a.meta.offsets, a.meta.state) == (
            b.meta.version, b.meta.kind, b.meta.offsets, b.meta.state,
        )  # fmt: skip
    assert {s.meta.kind for s in serving} == {"FULL", "DELTA"}
    full = [(a, b) for a, b in zip(training, serving, strict=True) if a.meta.kind == "FULL"][-1]
    assert 3 * len(full[1].payload) < len(full[0].payload)  # no optimiser state, int8, rows present

    with (
        _subscriber(settings, form_topic, public) as small,
        _subscriber(settings, settings.snapshot.topic, public) as whole,
    ):
        assert small.refresh() == whole.refresh() == training[-1].meta.version
        at = training[-1].meta.newest_event_ms
        for user in ("u1", "u42", "someone-new"):
            np.testing.assert_allclose(
                small.score(user, ITEMS, at_ms=at), whole.score(user, ITEMS, at_ms=at), atol=0.02
            )

    config = tmp_path / "learner.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        f'[snapshot]\ntopic = "{settings.snapshot.topic}"\n[model]\nname = "{settings.model.name}"\n'
    )
    shown = json.loads(_cli(config, "snapshots", "inspect"))
    assert shown["form"] == "training" and shown["version"] == training[-1].meta.version
    brief = shown["serving_form"]
    assert brief["kind"] == serving[-1].meta.kind and brief["payload_bytes"] == len(serving[-1].payload)
    assert brief["rows"]["user"] > 0 and "I8" in brief["weights"]
    listed = _cli(config, "snapshots", "list", "--form", "serving", "--last", "2").splitlines()
    assert [line.split()[1] for line in listed] == [f"v{s.meta.version}" for s in serving[-2:]]


def test_a_learner_refuses_to_restore_from_the_serving_form(kafka_bootstrap: str, new_topic) -> None:
    private, public = signing.generate()
    topic = new_topic("events", partitions=1)
    settings = _settings(kafka_bootstrap, topic, private, public)
    produce_synthetic(settings.kafka, topic, 1_500, rate=1000, backfill=True, config=SyntheticConfig(seed=5))
    with AppThread(settings, exit_when_idle=True) as run:
        run.join(120)
    misread = settings.model_copy(
        update={
            "snapshot": settings.snapshot.model_copy(
                update={"topic": settings.serving.form_topic_for(settings.snapshot.topic)}
            )
        }
    )
    refused: list[str] = []
    restored = restore(
        misread,
        lambda: (Learner(misread), make_windower(misread)),
        verifier=signing.verifier(misread.snapshot),
        on_refused=lambda err: refused.append(f"{err.reason}: {err.detail}"),
    )
    assert restored.meta is None and restored.resume == {}
    assert refused and all(r.startswith("form: ") and "cannot restore a learner" in r for r in refused)
