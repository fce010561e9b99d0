"""Distillation: students at about a quarter of the model's bytes, trained beside it, against the
model and against the same small models trained alone on the true labels.

    python -m benchmarks.distillation [--quick]

Two streams: `benchmarks.real`'s MovieLens 100K in time order (its loader, its 1-hour windows, its
pooled prequential AUC and log loss over the events after the first 10%), and the synthetic stream
(`SyntheticStream`, default config, count windows of 1,000 events). On each, one pass over the
windows runs, window by window, the model at its defaults (the teacher), the students beside it
(`Student.learn` right after `Learner.process`, as the training thread runs them) and the small
models alone (a `Learner` of the student's size, its own rate controller and guard, on the labels).
Training on the CPU with one thread is deterministic, so each AUC is that of its one run.

Bytes per model: its parameters (``model.*``: what the student makes smaller), a full snapshot's
payload (parameters, optimiser state and the feature state, which a student shares with its teacher:
the same ``features.*`` arrays), and the payload of its serving form (`snapshots.serving_form`: no
optimiser state, only the rows that hold information) in fp32 and int8. Time: the student's step
(score and train) against the teacher's, per window, both measured in turn in the same process: the
median over windows of the ratio.

Recorded under ``distillation`` in benchmarks/results/latest.json (not with ``--quick``).
Target (issue 24): a student at a quarter of the teacher's parameter bytes within 0.005 AUC of it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks import real
from benchmarks.results import record
from stream_learner.ingest.windowing import Window
from stream_learner.learning.learner import Learner
from stream_learner.learning.student import Student
from stream_learner.scoring.spec import ModelSpec
from stream_learner.snapshots import serving_form
from stream_learner.snapshots.format import encode_payload
from stream_learner.snapshots.state import arrays
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

#: Students (name -> [distill] settings) and small models alone (name -> [model] overrides).
STUDENTS: dict[str, dict[str, Any]] = {
    "student dim 4, alpha 0.5": {"enabled": True, "embedding_dim": 4, "alpha": 0.5},
    "student dim 4, alpha 0.9": {"enabled": True, "embedding_dim": 4, "alpha": 0.9},
    "student dim 3, alpha 0.5": {"enabled": True, "embedding_dim": 3, "alpha": 0.5},
    "student dim 3, alpha 0.7": {"enabled": True, "embedding_dim": 3, "alpha": 0.7},
    "student dim 3, alpha 0.9": {"enabled": True, "embedding_dim": 3, "alpha": 0.9},
}
ALONE: dict[str, dict[str, Any]] = {
    "dim 4 alone": {"embedding_dim": 4},
    "dim 3 alone": {"embedding_dim": 3},
    # a quarter of the rows (the real-time feature state too): not offered for a student, whose
    # inputs are the teacher's (docs/decisions/distillation.md); measured alone for the comparison
    "rows/4 alone": {"user_buckets": 1 << 16, "item_buckets": 1 << 16},
}
REAL_WINDOW = "1 hour"
SYNTHETIC_EVENTS = 200_000
SYNTHETIC_WINDOW = 1_000
SYNTHETIC_STEP_MS = 10  # 100 events a second
TARGET_AUC_GAP = 0.005
TARGET_BYTES_RATIO = 0.25


def real_windows(data: real.Ratings) -> tuple[list[Window], dict[str, Any]]:
    kind, size = real.WINDOWS[REAL_WINDOW]
    users, items = real.keys(data.user_id), real.keys(data.item_id)
    bounds = real.window_bounds(data, kind, size)
    windows = [
        Window(start, end, real.events(data, users, items, lo, hi), {0: (lo, hi - 1)}, "count")
        for start, end, lo, hi in bounds
    ]
    return windows, real.with_window({}, kind, size)


def synthetic_windows(events: int) -> Iterator[Window]:
    stream = SyntheticStream(SyntheticConfig())
    for w in range(events // SYNTHETIC_WINDOW):
        first = w * SYNTHETIC_WINDOW
        start = first * SYNTHETIC_STEP_MS
        batch = stream.batch(SYNTHETIC_WINDOW, start, SYNTHETIC_STEP_MS)
        end = start + SYNTHETIC_WINDOW * SYNTHETIC_STEP_MS
        yield Window(start, end, batch.events((), first), {0: (first, first + SYNTHETIC_WINDOW - 1)}, "count")


def model_bytes(tensors: dict[str, Any]) -> int:
    return sum(int(t.nbytes) for name, t in tensors.items() if name.startswith("model."))


def run_stream(windows: list[Window] | Iterator[Window], overrides: dict[str, Any]) -> dict[str, Any]:
    """Teacher, students and small models alone over the same windows; pooled quality, bytes, time."""
    teacher = Learner(real.settings(overrides))
    students = {n: Student(real.settings(overrides | {"distill": d}), teacher) for n, d in STUDENTS.items()}
    alone = {n: Learner(real.settings(overrides | {"model": m})) for n, m in ALONE.items()}
    labels: list[np.ndarray] = []
    probs: dict[str, list[np.ndarray]] = {name: [] for name in ["teacher", *students, *alone]}
    ratios: dict[str, list[float]] = {name: [] for name in students}
    for window in windows:
        started = time.perf_counter()
        result = teacher.process(window)
        teacher_seconds = time.perf_counter() - started
        assert result.probabilities is not None
        labels.append(window.events.label)
        probs["teacher"].append(result.probabilities)
        for name, student in students.items():
            started = time.perf_counter()
            taught = student.learn(result)
            ratios[name].append((time.perf_counter() - started) / max(teacher_seconds, 1e-9))
            probs[name].append(taught.probabilities if taught is not None else result.probabilities * np.nan)
        for name, learner in alone.items():
            own = learner.process(window).probabilities
            assert own is not None
            probs[name].append(own)
    y = np.concatenate(labels)
    quality = {name: real.pooled(y, np.concatenate(p)) for name, p in probs.items()}
    sizes = {
        "teacher": _sizes(teacher.tensors(), teacher.spec),
        **{n: _sizes(s.tensors(), s.spec) for n, s in students.items()},
        **{n: _sizes(a.tensors(), a.spec) for n, a in alone.items()},
    }
    out: dict[str, Any] = {"events": len(y), "windows": len(labels), "models": {}}
    for name in probs:
        row = quality[name] | sizes[name]
        row["model_bytes_ratio"] = round(sizes[name]["model_bytes"] / sizes["teacher"]["model_bytes"], 4)
        for kind in ("full_snapshot", "serving_fp32", "serving_int8"):
            ratio = sizes[name][f"{kind}_bytes"] / sizes["teacher"][f"{kind}_bytes"]
            row[f"{kind}_bytes_ratio"] = round(ratio, 4)
        row["auc_below_teacher"] = round(quality["teacher"]["auc"] - quality[name]["auc"], 5)
        if name in ratios:
            row["seconds_per_window_vs_teacher"] = round(float(np.median(ratios[name])), 3)
        out["models"][name] = row
        print(f"  {name:26s} {row}", flush=True)
    return out


def _sizes(tensors: dict[str, Any], spec: ModelSpec) -> dict[str, int]:
    state = arrays(tensors)
    return {
        "model_bytes": model_bytes(tensors),
        "full_snapshot_bytes": encode_payload(state).size,
        "serving_fp32_bytes": encode_payload(serving_form.convert(state, spec, "fp32")).size,
        "serving_int8_bytes": encode_payload(serving_form.convert(state, spec, "int8")).size,
    }


def targets(stream: dict[str, Any]) -> dict[str, Any]:
    """Per student: at most a quarter of the teacher's parameter bytes, within 0.005 AUC of it; and
    how it compares with the same small model alone."""
    models = stream["models"]
    out = {}
    for name in STUDENTS:
        row = models[name]
        dim = STUDENTS[name]["embedding_dim"]
        alone = models[f"dim {dim} alone"]
        out[name] = {
            "quarter_bytes": row["model_bytes_ratio"] <= TARGET_BYTES_RATIO,
            "within_auc": row["auc_below_teacher"] <= TARGET_AUC_GAP,
            "auc_over_alone": round(row["auc"] - alone["auc"], 5),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30,000 events of each stream; nothing recorded")
    args = parser.parse_args()
    data = real.load()
    events = SYNTHETIC_EVENTS
    if args.quick:
        data, events = data.head(real.QUICK_EVENTS), real.QUICK_EVENTS
    started = time.perf_counter()
    print(f"MovieLens 100K, {REAL_WINDOW} windows:", flush=True)
    windows, overrides = real_windows(data)
    movielens = run_stream(windows, overrides)
    print(f"synthetic, {events:,} events in windows of {SYNTHETIC_WINDOW:,}:", flush=True)
    synthetic = run_stream(synthetic_windows(events), real.with_window({}, "count", SYNTHETIC_WINDOW))
    results: dict[str, Any] = {
        "protocol": {
            "teacher": "the defaults (fm, embedding_dim 16), CPU, one thread",
            "students": STUDENTS,
            "alone": ALONE,
            "movielens_window": REAL_WINDOW,
            "synthetic": {"events": events, "window": SYNTHETIC_WINDOW, "step_ms": SYNTHETIC_STEP_MS},
            "quality": "pooled prequential AUC and log loss after the first 10% of events (benchmarks.real)",
            "bytes": "model_bytes: model.* tensors; full_snapshot_bytes: a full snapshot's payload; "
            "serving_*_bytes: the payload of its serving form (snapshots.serving_form)",
            "time": "median over windows of the student's seconds (score + train) / the teacher's",
        },
        "movielens": movielens | {"targets": targets(movielens)},
        "synthetic": synthetic | {"targets": targets(synthetic)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"targets: movielens {results['movielens']['targets']}", flush=True)
    print(f"targets: synthetic {results['synthetic']['targets']}", flush=True)
    if not args.quick:
        record("distillation", results)


if __name__ == "__main__":
    main()
