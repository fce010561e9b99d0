"""``stream-learner snapshots export --format onnx`` as a subprocess, against a conformance
snapshot on the real broker: onnxruntime scores the exported file as the vectors say."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime

from benchmarks import conformance
from tests.snapshot_support import SNAPSHOT_TOPIC_CONFIG, produce_raw
from tests.unit.test_conformance import snapshot

CASE = conformance.OUTPUT / "dnn-dynamic-delayed"


def test_export_a_version_to_onnx(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic("snapshots", partitions=1, config=SNAPSHOT_TOPIC_CONFIG)
    data = (CASE / "snapshot.bin").read_bytes()
    produce_raw(kafka_bootstrap, topic, CASE.name.encode(), [data[4:]])  # its one envelope
    assert snapshot(CASE).meta.version == 1
    flags = ["--bootstrap-server", kafka_bootstrap, "--topic", topic, "--model", CASE.name]

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "stream_learner", "snapshots", "export", *flags, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    output = tmp_path / "model.onnx"
    done = export("--format", "onnx", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert f"exported {CASE.name} v1 (dnn)" in done.stdout and "inputs (n, 7)" in done.stdout
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for query in json.loads((CASE / "cases.json").read_text())["queries"]:
        want = query["expected"]
        feed = {"rows": np.array(want["rows"], np.int64), "inputs": np.array(want["inputs"], np.float32)}
        (logits,) = session.run(["logit"], feed)
        np.testing.assert_allclose(logits, want["logits"], rtol=0, atol=1e-5)

    missing = export("--version", "9", "--output", str(tmp_path / "none.onnx"))
    assert missing.returncode == 1 and "v9" in missing.stderr
