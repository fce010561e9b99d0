"""The benchmark figures the docs quote, rendered from benchmarks/results/latest.json.

    .venv/bin/python -m benchmarks.figures      # after a benchmark run: rewrite the docs' blocks

In a doc listed in `DOCS`, the lines between ``<!-- figures: NAME -->`` and ``<!-- /figures -->`` are
what `TABLES[NAME]` renders from the results; tests/unit/test_benchmark_figures.py fails when they
differ, so a figure in the docs is never older than latest.json. Each figure is the median of the
recorded rounds (benchmarks/rounds.py), computed here from the rounds themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.results import RESULTS
from benchmarks.rounds import median

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "docs" / "distributed.md",
    REPO / "README.md",
    REPO / "docs" / "decisions" / "realtime-features.md",
]
BLOCK = re.compile(r"(<!-- figures: (\S+) -->\n)(.*?)(<!-- /figures -->)", re.S)


def _rate(rounds: list[dict[str, Any]]) -> str:
    return f"{round(median([r['events_per_second'] for r in rounds])):,}"


def distributed_throughput(results: dict[str, Any]) -> str:
    section = results["distributed_throughput"]
    rounds = section["rounds"]
    rows = [
        ("one process (`stream-learner run`)", "process"),
        ("1 rank (torchrun)", "1-rank"),
        ("2 ranks (torchrun, as `--workers 2`)", "2-ranks"),
    ]
    lines = [
        "| job | events/s, global mini-batch 1024 (default) | events/s, global mini-batch 8192 |",
        "| --- | --- | --- |",
    ]
    for label, how in rows:
        large = _rate(rounds[f"{how}/8192"]) if f"{how}/8192" in rounds else ""
        lines.append(f"| {label} | {_rate(rounds[how])} | {large} |")
    each = "; ".join(
        how + " " + ", ".join(f"{r['events_per_second']:,}" for r in done) for how, done in rounds.items()
    )
    lines += [
        "",
        f"{section['events']:,} events in {section['partitions']} partitions ({section['model']}), recorded "
        f"{section['recorded_at'][:10]}; the median of {len(rounds['process'])} rounds, the jobs in turns "
        f"within each (events/s of each round: {each}).",
    ]
    return "\n".join(lines) + "\n"


def _pair(learner: dict[str, Any], bold: bool = False) -> str:
    auc, loss = f"{learner['auc']:.4f}", f"{learner['log_loss']:.4f}"
    return f"**{auc}** / **{loss}**" if bold else f"{auc} / {loss}"


def real_data(results: dict[str, Any]) -> str:
    """MovieLens 100K (section ``real``): ours with and without the feedback delay against the
    per-event peers and the windowed ones, AUC / log loss per window setting."""
    section = results["real"]
    columns = [
        ("stream-learner (defaults)", "ours (defaults)"),
        ("VW linear, per event", "vw_linear_per_event"),
        ("VW `-q ui`, per event", "vw_quadratic_per_event"),
        ("counting, as of each event", "counting_as_of"),
        ("stream-learner, labels 60 s late", "ours (delay 60 s)"),
        ("counting as of each event, labels 60 s late", "counting_as_of_delay60"),
        ("VW linear, per window", "vw_linear"),
    ]
    lines = [
        "| window | " + " | ".join(name for name, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    window = {"1000 events": "1,000 events", "1 hour": "1 hour", "1 day": "1 day"}
    for name, label in window.items():
        learners = section["settings"][name]["learners"]
        cells = [_pair(learners[key], bold=key == "ours (defaults)") for _, key in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    targets = [section["settings"][name]["targets"]["ours (defaults)"] for name in window]
    margins = ", ".join(f"{t['auc_margin_over_counting_as_of']:+.4f}" for t in targets)
    delayed = ", ".join(f"{t['delayed_auc_margin']:+.4f}" for t in targets)
    lines += [
        "",
        f"AUC over the as-of counting baseline: {margins}; with labels 60 s late, over the delayed "
        f"baseline: {delayed}; AUC at 1-day windows {section['window_spread']:.4f} from 1,000-event "
        f"windows. Recorded {section['recorded_at'][:10]}.",
    ]
    ties = [key for key in ("vw_linear_per_event_ties", "vw_quadratic_per_event_ties") if key in learners]
    if ties:
        shown = " and ".join(f"{key.removesuffix('_per_event_ties')} {_pair(learners[key])}" for key in ties)
        lines.append(
            f"VW learning the events of one timestamp one by one (`--ties`; information our features do "
            f"not have): {shown}."
        )
    before = results.get("real_windowed_features")
    if before is not None:
        old = ", ".join(_pair(before["settings"][name]["learners"]["ours (defaults)"]) for name in window)
        lines.append(
            f"The same learner with its per-id inputs updated once per window (before real-time features, "
            f"section `real_windowed_features`): {old}."
        )
    return "\n".join(lines) + "\n"


#: The variants of `benchmarks.real --ablations` that show what each real-time input gains.
REALTIME_ABLATIONS = [
    ("defaults: the user's four inputs, the item's three, recent_seconds 300", "ours (defaults)"),
    (
        "rate and activity only (surprise inputs zeroed)",
        "real-time rate and activity only (surprise inputs zeroed)",
    ),
    ("without the recent surprise", "real-time without recent surprise"),
    ("recent_seconds 60", "recent_seconds 60"),
    ("recent_seconds 3600", "recent_seconds 3600"),
    ("recent_seconds 86400", "recent_seconds 86400"),
    ("no per-id inputs (model.count_features = false)", "no counts"),
]


def realtime_ablations(results: dict[str, Any]) -> str:
    """What each real-time input gains (section ``real_ablations``), AUC / log loss per window setting,
    and the learner before real-time features (section ``real_windowed_features``)."""
    section = results["real_ablations"]["settings"]
    window = {"1000 events": "1,000 events", "1 hour": "1 hour", "1 day": "1 day"}
    lines = ["| variant | " + " | ".join(window.values()) + " |", "|---" * (len(window) + 1) + "|"]
    for label, key in REALTIME_ABLATIONS:
        lines.append(f"| {label} | " + " | ".join(_pair(section[w]["learners"][key]) for w in window) + " |")
    before = results["real_windowed_features"]["settings"]
    lines.append(
        "| inputs updated once per window (before, section `real_windowed_features`) | "
        + " | ".join(_pair(before[w]["learners"]["ours (defaults)"]) for w in window)
        + " |"
    )
    lines += ["", f"Recorded {results['real_ablations']['recorded_at'][:10]}."]
    return "\n".join(lines) + "\n"


SERVING_STREAMS = {
    "movielens": "MovieLens 100K",
    "synthetic_2^20": "synthetic, 2^20 rows",
    "synthetic_2^22": "synthetic, 2^22 rows",
}


def serving_forms(results: dict[str, Any]) -> str:
    """What each form of a version costs a serving process and what it scores (section
    ``compression``, benchmarks.compression): the training snapshot against the serving form."""
    section = results["compression"]
    lines = [
        "| stream | form | full snapshot | delta | model memory | load | score 100 | AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in SERVING_STREAMS.items():
        forms = section["serving_forms"][key]["forms"]
        for form in ("training", "fp32", "fp16", "int8"):
            f = forms[form]
            name = "training (fp32, all rows)" if form == "training" else f"serving {form}"
            lines.append(
                f"| {label} | {name} | {f['full_bytes'] / 1e6:,.2f} MB | {f['delta_bytes'] / 1e6:,.2f} MB | "
                f"{f['model_bytes'] / 1e6:,.2f} MB | {f['load_seconds']:.3f} s | {f['score_us']:.0f} µs | "
                f"{f['auc']:.5f} |"
            )
    lines += [
        "",
        "Model memory: the model's arrays a subscriber holds; load: reading and verifying a full "
        "snapshot; score 100: one request of 100 candidates. Recorded "
        f"{section['recorded_at'][:10]} by `python -m benchmarks.compression`.",
    ]
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "serving_forms": serving_forms,
    "realtime_ablations": realtime_ablations,
    "distributed_throughput": distributed_throughput,
    "real_data": real_data,
}


def render(text: str, results: dict[str, Any]) -> str:
    """``text`` with every figures block rendered anew from ``results``."""
    return BLOCK.sub(lambda m: m[1] + TABLES[m[2]](results) + m[4], text)


def main() -> None:
    results = json.loads(RESULTS.read_text())
    for doc in DOCS:
        doc.write_text(render(doc.read_text(), results))
        print(f"rendered the figures of {doc.relative_to(REPO)}")


if __name__ == "__main__":
    main()
