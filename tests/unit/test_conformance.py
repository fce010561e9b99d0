"""The conformance vectors (conformance/): the package computes what they say, benchmarks.conformance
writes them again, and the ONNX export scores the training snapshots' within 1e-5 in onnxruntime."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from benchmarks import conformance
from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.realtime import Formula
from stream_learner.scoring.spec import ModelSpec
from stream_learner.serving.compact import compact_inputs
from stream_learner.serving.export import build
from stream_learner.serving.model import ServableModel
from stream_learner.snapshots import chain, serving_form
from stream_learner.snapshots.format import Assembler, Snapshot, decode_chunk, decode_payload

CASES = sorted(p for p in conformance.OUTPUT.iterdir() if p.is_dir())


def snapshot(directory: Path) -> Snapshot:
    """The snapshot of a case, read as every reader reads one: envelopes, checksum, safetensors."""
    data = (directory / "snapshot.bin").read_bytes()
    assembler, found = Assembler(), None
    while data:
        (length,) = struct.unpack(">I", data[:4])
        found = assembler.add(decode_chunk(data[4 : 4 + length])) or found
        data = data[4 + length :]
    assert found is not None
    return found


def load(snap: Snapshot) -> tuple[dict[str, np.ndarray], ModelSpec]:
    """The verified state of a case's snapshot, of either form."""
    fold, spec = serving_form.load([snap]) if snap.meta.form == "serving" else chain.load([snap])
    return fold.tensors, spec


def queries(directory: Path) -> list[dict[str, Any]]:
    document = json.loads((directory / "cases.json").read_text())
    assert document["model"] == directory.name and document["queries"]
    return list(document["queries"])


def test_every_case_is_there() -> None:
    assert [p.name for p in CASES] == sorted(c.name for c in conformance.CASES)
    kinds = {json.loads((p / "cases.json").read_text())["kind"] for p in CASES}
    assert kinds == {"logistic", "fm", "dnn"}


@pytest.mark.parametrize("directory", CASES, ids=lambda p: p.name)
def test_the_package_computes_the_vectors(directory: Path) -> None:
    tensors, spec = load(snapshot(directory))
    served = ServableModel(spec, tensors)
    for query in queries(directory):
        want, items = query["expected"], query["items"]
        n = len(items)
        context = {k: [v] * n for k, v in (query["context"] or {}).items()}
        rows = served.mapper.rows_for_ids([query["user"]] * n, items, context)
        assert rows.tolist() == want["rows"]
        inputs = None
        if want["inputs"] is not None:
            counted = rows[:, : served.counted]
            if isinstance(served.mapper, FeatureMapper):
                assert served.mapper.realtime is not None
                inputs = served.mapper.realtime.query(counted, np.full(n, query["at_ms"], np.int64))
            else:
                formula = Formula.from_dict(spec.extra["features"])
                inputs = compact_inputs(spec, formula, tensors, counted, query["at_ms"])
            np.testing.assert_allclose(inputs, want["inputs"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(served.model.logits(rows, inputs), want["logits"], rtol=0, atol=1e-5)
        scores = served.score(query["user"], items, query["context"], at_ms=query["at_ms"])
        np.testing.assert_allclose(scores, want["scores"], rtol=0, atol=1e-6)


def test_the_generator_writes_the_same_vectors(tmp_path: Path) -> None:
    for case in conformance.CASES:
        conformance.write(case, tmp_path / case.name)
        old, new = snapshot(conformance.OUTPUT / case.name), snapshot(tmp_path / case.name)
        assert old.meta == new.meta
        before, after = decode_payload(old.payload), decode_payload(new.payload)
        assert sorted(before) == sorted(after)
        for name, value in before.items():  # floating point: within what another libm may round
            np.testing.assert_allclose(after[name], value, rtol=1e-12, atol=0, err_msg=name)
        for was, now in zip(
            queries(conformance.OUTPUT / case.name), queries(tmp_path / case.name), strict=True
        ):
            assert {k: v for k, v in was.items() if k != "expected"} == {
                k: v for k, v in now.items() if k != "expected"
            }
            for key in ("keys", "rows"):
                assert was["expected"][key] == now["expected"][key]
            for key in ("inputs", "logits", "scores"):
                if was["expected"][key] is not None:
                    np.testing.assert_allclose(now["expected"][key], was["expected"][key], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "directory", [d for d in CASES if snapshot(d).meta.form != "serving"], ids=lambda p: p.name
)
def test_onnx_export_scores_the_vectors_within_1e_5(directory: Path) -> None:
    """Of every case of a training snapshot (the export reads the training form)."""
    snap = snapshot(directory)
    fold, spec = chain.load([snap])
    model = build(spec, fold.tensors, snap.meta)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    about = model.metadata_props
    assert {p.key: p.value for p in about}["stream_learner.version"] == "1"
    for query in queries(directory):
        want = query["expected"]
        feed = {"rows": np.array(want["rows"], np.int64)}
        if want["inputs"] is not None:
            feed["inputs"] = np.array(want["inputs"], np.float32)
        logits, scores = session.run(["logit", "score"], feed)
        np.testing.assert_allclose(logits, want["logits"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(scores, want["scores"], rtol=0, atol=1e-5)
