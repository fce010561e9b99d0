"""``stream-learner snapshots list|inspect`` and ``stream-learner recommend`` as subprocesses, against
snapshots a learner committed to the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.snapshot_support import produce_raw
from tests.support import AppThread, learner_settings, read_snapshots


def _cli(*args: str, config: Path | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_learner",
            "--log-level",
            "WARNING",
            *args,
            *(["--config", str(config)] if config else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_inspect_and_recommend(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic("events", partitions=2)
    settings = learner_settings(kafka_bootstrap, topic, snapshot={"every_windows": 1, "full_every": 3})
    produce_synthetic(settings.kafka, topic, 3000, rate=1000, backfill=True, config=SyntheticConfig(seed=4))
    with AppThread(settings, exit_when_idle=True) as run:
        summary = run.join(120)
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    newest = snapshots[-1].meta
    produce_raw(kafka_bootstrap, settings.snapshot.topic, settings.model.name.encode(), [b"not a snapshot"])
    config = tmp_path / "learner.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        f'[snapshot]\ntopic = "{settings.snapshot.topic}"\n'
        f'[model]\nname = "{settings.model.name}"\n'
    )

    listing = _cli("snapshots", "list", "--last", "4", config=config)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 4
    assert "refused: snapshot refused (decode)" in lines[-1]  # the newest message: garbage
    assert [line.split()[1] for line in lines[:3]] == [
        f"v{v}" for v in range(newest.version - 2, newest.version + 1)
    ]
    assert any(" delta <-v" in line for line in lines) and any(" full " in line for line in lines)
    named = ("--bootstrap-server", kafka_bootstrap, "--topic", settings.snapshot.topic)
    by_flags = _cli("snapshots", "list", "--last", "4", *named, "--model", settings.model.name, config=None)
    assert by_flags.returncode == 0 and by_flags.stdout == listing.stdout, by_flags.stderr

    inspect = _cli("snapshots", "inspect", config=config)
    assert inspect.returncode == 0, inspect.stderr
    shown = json.loads(inspect.stdout)
    assert shown["version"] == newest.version == summary.version
    assert shown["state"]["learner"]["events_trained"] == 3000
    assert shown["payload_bytes"] == len(snapshots[-1].payload)
    first = json.loads(_cli("snapshots", "inspect", "--version", "1", config=config).stdout)
    assert first["kind"] == "FULL" and first["base_version"] is None
    assert first["tensors"]["model.embeddings.user.weight"] == ["F32", [1 << 12, 16]]

    rec = _cli("recommend", "--user", "u42", "-k", "5", config=config)
    assert rec.returncode == 0, rec.stderr
    header, *ranked = rec.stdout.splitlines()
    assert f"v{newest.version}" in header and "u42" in header
    assert [r.split()[0] for r in ranked] == ["1", "2", "3", "4", "5"]
    recent = set(newest.state_dict()["learner"]["recent_items"])
    assert {r.split()[1] for r in ranked} <= recent
    scores = [float(r.split()[2]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    chosen = _cli("recommend", "--user", "u42", "-k", "2", "--candidates", "i1,i2,i3", config=config)
    assert chosen.returncode == 0, chosen.stderr
    picked = [r.split()[1] for r in chosen.stdout.splitlines()[1:]]
    assert len(picked) == 2 and set(picked) < {"i1", "i2", "i3"}

    missing = _cli("recommend", "--user", "u1", "--model", "no-such-model", config=config)
    assert missing.returncode == 1
    assert "no usable snapshot of no-such-model" in missing.stderr
