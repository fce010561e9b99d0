"""Compression benchmark (issue 24): what each form of a model costs a serving team, and what it
scores, against the full fp32 training snapshot.

Section ``serving_forms`` (this module): on the real-data stream of `benchmarks.real` (MovieLens
100K, its loader; 1,000-event windows, the default settings) and on the synthetic stream with 2^20
and 2^22 rows per table, per form (the training snapshot; the serving form at fp32, fp16 and int8):

- bytes of a full snapshot, and of a delta (one window's changes) after the last window;
- subscriber load time, resident memory and model memory, scoring latency: `benchmarks.serving_load`
  in a process of its own per form and round (no torch, as a serving process), medians of ROUNDS
  alternated rounds;
- prequential AUC: before each window, each form of the state as it stands scores the window's events
  (the same rows and real-time inputs), pooled over the events after the first 10%; against the full
  fp32 model scored the same way.

Targets (`meets_targets`): int8 at most 1/8 of the full snapshot's bytes and of the subscriber's
model memory, AUC within 0.001 of fp32; fp16 within 0.0002. Pruning and distillation record their own
sections (`python -m benchmarks.pruning`, `python -m benchmarks.distillation`; all three run in
`make bench`); `SECTIONS` is where more of this module's would go.

    python -m benchmarks.compression           # records `compression`
    python -m benchmarks.compression --quick   # 30,000 MovieLens events, 2^16 rows; nothing recorded
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import real
from benchmarks.results import record
from benchmarks.rounds import median
from stream_learner.config import Settings
from stream_learner.ingest.events import EventBatch
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner
from stream_learner.learning.quality import roc_auc
from stream_learner.scoring.model import NumpyModel
from stream_learner.serving.compact import CompactIds
from stream_learner.snapshots import serving_form
from stream_learner.snapshots.format import SnapshotMeta, encode, encode_payload
from stream_learner.snapshots.state import StateCopier, arrays
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

PRECISIONS: tuple[serving_form.Precision, ...] = ("fp32", "fp16", "int8")
FORMS = ("training", *PRECISIONS)
ROUNDS = 3
SCORE_CALLS = 200
CANDIDATES = 100
WARMUP = real.WARMUP_FRACTION
#: The synthetic stream: an id space larger than its default, so that the tables fill as a service's.
SYNTHETIC = SyntheticConfig(users=200_000, items=20_000, seed=11)
SYNTHETIC_WINDOW = 5_000
TARGETS = {"bytes_ratio": 1 / 8, "memory_ratio": 1 / 8, "auc_int8": 0.001, "auc_fp16": 0.0002}

#: A stream: (window, the state before it is learnt is scored) in order.
Stream = Iterator[Window]


def movielens(events: int | None) -> tuple[Settings, Stream]:
    data = real.load()
    if events is not None:
        data = data.head(events)
    bounds = real.window_bounds(data, "count", 1_000)
    users, items = real.keys(data.user_id), real.keys(data.item_id)

    def windows() -> Stream:
        for start, end, lo, hi in bounds:
            yield Window(start, end, real.events(data, users, items, lo, hi), {0: (lo, hi - 1)}, "count")

    return real.settings(real.with_window({}, "count", 1_000)), windows()


def synthetic(rows: int, count: int) -> tuple[Settings, Stream]:
    stream = SyntheticStream(SYNTHETIC)
    fields = tuple(name for name, _ in SYNTHETIC.context)

    def windows() -> Stream:
        for w in range(count):
            start = w * SYNTHETIC_WINDOW
            batch = stream.batch(SYNTHETIC_WINDOW, start, 1).events(fields, start)
            yield Window(
                start, start + SYNTHETIC_WINDOW, batch, {0: (start, start + SYNTHETIC_WINDOW - 1)}, "count"
            )

    model = {"user_buckets": rows, "item_buckets": rows, "context_fields": list(fields)}
    return real.settings({"model": model, "window": {"kind": "count", "count": SYNTHETIC_WINDOW}}), windows()


def _inputs(learner: Learner, rows: np.ndarray, batch: EventBatch) -> np.ndarray | None:
    """The real-time inputs of each event as of its own time (what the learner scores it with)."""
    realtime = learner.features.realtime
    if realtime is None:
        return None
    until = int(batch.timestamp_ms.max())
    return realtime.window(learner.features.stream(rows, batch), until).inputs


def _columns(batch: EventBatch) -> list[np.ndarray]:
    return [batch.user, batch.item] + [batch.context[:, i] for i in range(batch.context.shape[1])]


def replay(settings: Settings, stream: Stream) -> tuple[Learner, Window, dict[str, Any]]:
    """Learn the stream window by window; before each window, every form of the state as it stands
    scores it. Returns the learner, the last window (not learnt yet: `sizes` cuts a delta of it) and
    the AUCs."""
    learner = Learner(settings)
    spec = learner.spec
    labels: list[np.ndarray] = []
    probs: dict[str, list[np.ndarray]] = {form: [] for form in FORMS}
    windows = list(stream)
    for window in windows[:-1]:
        batch = window.events
        state = arrays(learner.tensors(copy=False))
        rows = learner.features.rows(batch)
        inputs = _inputs(learner, rows, batch)
        probs["training"].append(NumpyModel(spec, state).scores(rows, inputs))
        forms = serving_form.convert_each(state, spec, PRECISIONS)
        served_rows = CompactIds(spec, forms["fp32"]).rows_from_keys(_columns(batch))
        for precision, form in forms.items():
            probs[precision].append(NumpyModel(spec, form).scores(served_rows, inputs))
        labels.append(batch.label)
        learner.process(window)
    y = np.concatenate(labels)
    first = int(len(y) * WARMUP)
    auc = {form: round(roc_auc(y[first:], np.concatenate(p)[first:]), 5) for form, p in probs.items()}
    return learner, windows[-1], {"auc": auc, "events": len(y), "windows": len(windows)}


def _framed(meta: SnapshotMeta, tensors: dict[str, np.ndarray], path: Path) -> int:
    """Write a snapshot's messages to ``path`` (each after its 4-byte length); its payload bytes."""
    payload = encode_payload(tensors)
    with open(path, "wb") as out:
        for message in encode(meta, payload, 8 << 20):
            out.write(struct.pack(">I", len(message)) + message)
    return payload.size


def _meta(learner: Learner, form: str, version: int, kind: str) -> SnapshotMeta:
    return SnapshotMeta(
        model_name="bench",
        version=version,
        kind=kind,  # type: ignore[arg-type]
        spec=learner.spec.to_json(),
        created_ms=0,
        window_start_ms=0,
        window_end_ms=0,
        newest_event_ms=0,
        base_version=version - 1 if kind == "DELTA" else None,
        form="training" if form == "training" else "serving",
    )


def sizes(learner: Learner, last: Window, folder: Path) -> dict[str, dict[str, Any]]:
    """Bytes of each form's full snapshot (written to ``folder`` for the children) and of the delta
    that learning the last window makes; the conversion's time."""
    spec = learner.spec
    copier = StateCopier(learner, full_every=1 << 30)
    full = copier.copy().tensors
    out: dict[str, dict[str, Any]] = {}
    converted: dict[str, dict[str, np.ndarray]] = {"training": full}
    for precision in PRECISIONS:
        started = time.perf_counter()
        converted[precision] = serving_form.convert(full, spec, precision)
        out[precision] = {"convert_seconds": round(time.perf_counter() - started, 3)}
    for form, tensors in converted.items():
        out.setdefault(form, {})["full_bytes"] = _framed(
            _meta(learner, form, 1, "FULL"), tensors, folder / form
        )
    del converted, full
    learner.process(last)
    change = copier.copy().tensors
    out["training"]["delta_bytes"] = encode_payload(change).size
    for precision, tensors in serving_form.convert_each(change, spec, PRECISIONS).items():
        out[precision]["delta_bytes"] = encode_payload(tensors).size
    return out


def _measure(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_load", str(path), str(SCORE_CALLS), str(CANDIDATES)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def serving_forms(name: str, settings: Settings, stream: Stream) -> dict[str, Any]:
    """One stream's figures, per form (see the module docstring)."""
    started = time.perf_counter()
    learner, last, quality = replay(settings, stream)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        forms = sizes(learner, last, folder)
        del learner
        rounds: dict[str, list[dict[str, Any]]] = {form: [] for form in FORMS}
        for _ in range(ROUNDS):
            for form in FORMS:  # alternated within each round
                rounds[form].append(_measure(folder / form))
    for form in FORMS:
        forms[form] |= {k: median([r[k] for r in rounds[form]]) for k in rounds[form][0]}
        forms[form]["auc"] = quality["auc"][form]
    whole = forms["training"]
    for form in FORMS[1:]:
        forms[form]["bytes_ratio"] = round(forms[form]["full_bytes"] / whole["full_bytes"], 4)
        forms[form]["memory_ratio"] = round(forms[form]["model_bytes"] / whole["model_bytes"], 4)
        forms[form]["auc_vs_fp32"] = round(forms[form]["auc"] - whole["auc"], 5)
    line = ", ".join(f"{f} {forms[f]['full_bytes'] / 2**20:.1f} MiB AUC {forms[f]['auc']}" for f in FORMS)
    print(f"{name}: {line} ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"events": quality["events"], "windows": quality["windows"], "forms": forms}


def meets(result: dict[str, Any]) -> bool:
    int8, fp16 = result["forms"]["int8"], result["forms"]["fp16"]
    return (
        int8["bytes_ratio"] <= TARGETS["bytes_ratio"]
        and int8["memory_ratio"] <= TARGETS["memory_ratio"]
        and abs(int8["auc_vs_fp32"]) <= TARGETS["auc_int8"]
        and abs(fp16["auc_vs_fp32"]) <= TARGETS["auc_fp16"]
    )


def streams(quick: bool) -> dict[str, Callable[[], tuple[Settings, Stream]]]:
    if quick:
        return {"movielens": lambda: movielens(30_000), "synthetic_2^16": lambda: synthetic(1 << 16, 8)}
    return {
        "movielens": lambda: movielens(None),
        "synthetic_2^20": lambda: synthetic(1 << 20, 40),
        "synthetic_2^22": lambda: synthetic(1 << 22, 20),
    }


#: The sections of this module: name -> what computes it (quick or not).
SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "serving_forms": lambda quick: {
        name: serving_forms(name, *make()) for name, make in streams(quick).items()
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run; nothing recorded")
    args = parser.parse_args()
    results = {name: section(args.quick) for name, section in SECTIONS.items()}
    forms = results["serving_forms"]
    summary = {"targets": TARGETS, "meets_targets": {name: meets(r) for name, r in forms.items()}}
    print(json.dumps({**results, **summary}, indent=1))
    if not args.quick:
        record("compression", {**results, **summary})


if __name__ == "__main__":
    main()
