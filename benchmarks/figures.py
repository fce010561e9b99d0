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
    REPO / "docs" / "decisions" / "pruning.md",
    REPO / "docs" / "decisions" / "distillation.md",
]
BLOCK = re.compile(r"(<!-- figures: (\S+) -->\n)(.*?)(<!-- /figures -->)", re.S)


#: benchmarks.real's window settings (its result keys) and how the docs name them.
WINDOWS = {"1000 events": "1,000 events", "1 hour": "1 hour", "1 day": "1 day"}


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
    for name, label in WINDOWS.items():
        learners = section["settings"][name]["learners"]
        cells = [_pair(learners[key], bold=key == "ours (defaults)") for _, key in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    targets = [section["settings"][name]["targets"]["ours (defaults)"] for name in WINDOWS]
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
        old = ", ".join(_pair(before["settings"][name]["learners"]["ours (defaults)"]) for name in WINDOWS)
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
    lines = ["| variant | " + " | ".join(WINDOWS.values()) + " |", "|---" * (len(WINDOWS) + 1) + "|"]
    for label, key in REALTIME_ABLATIONS:
        lines.append(f"| {label} | " + " | ".join(_pair(section[w]["learners"][key]) for w in WINDOWS) + " |")
    before = results["real_windowed_features"]["settings"]
    lines.append(
        "| inputs updated once per window (before, section `real_windowed_features`) | "
        + " | ".join(_pair(before[w]["learners"]["ours (defaults)"]) for w in WINDOWS)
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


POLICIES = ("least_recent", "least_seen", "smallest_norm")


def pruning_real(results: dict[str, Any]) -> str:
    """The dynamic table against hashing on MovieLens (section ``pruning``, part ``real``): below
    its ceiling, and with ceilings below the id count per policy."""
    section = results["pruning"]["real"]
    lines = [
        "| window | hash (defaults) | dynamic, ceiling above the ids | difference | dynamic, expiry 7 days "
        "(former default) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in WINDOWS.items():
        s = section["settings"][key]
        auc = {name: learner["auc"] for name, learner in s["learners"].items()}
        lines.append(
            f"| {label} | {auc['hash (defaults)']:.5f} | "
            f"{auc['dynamic, ceiling above the ids (pruning defaults)']:.5f} | "
            f"{s['dynamic_minus_hash']:.5f} | "
            f"{auc['dynamic, age-based expiry 7 days (former default)']:.5f} |"
        )
    ceiling = section["ceiling_below_the_ids"]
    lines += [
        "",
        f"With ceilings below the id count ({ceiling['user_buckets'] - 1} user and "
        f"{ceiling['item_buckets'] - 1} item slots), each policy against hashing into the same rows:",
        "",
        "| window | " + " | ".join(POLICIES) + " | hash, same rows |",
        "| --- " * (len(POLICIES) + 2) + "|",
    ]
    for key, label in WINDOWS.items():
        learners = section["settings"][key]["learners"]
        cells = [f"{learners[f'dynamic, ceiling below the ids, prune_by {p}']['auc']:.5f}" for p in POLICIES]
        hashed = learners["hash into the same rows as the ceiling"]["auc"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {hashed:.5f} |")
    lines += ["", f"Recorded {results['pruning']['recorded_at'][:10]} (`{results['pruning']['command']}`)."]
    return "\n".join(lines) + "\n"


def _unbounded_rows(part: dict[str, Any]) -> list[str]:
    stream, contenders = part["stream"], part["contenders"]
    hashed = next(c for name, c in contenders.items() if name.startswith("hash"))
    users = hashed["checkpoints"][-1]["distinct_users"]
    run = (
        f"{stream['events'] / 1e6:g}M events, {users / 1e6:.2g}M users "
        f"(truth {hashed['true_probability_auc']:.4f})"
    )
    best = max(c["auc"] for c in contenders.values())
    rows: list[str] = []
    for name, c in sorted(contenders.items(), key=lambda item: not item[0].startswith("hash")):
        label = "hash, same bytes" if name.startswith("hash") else "dynamic, " + name.split("prune_by ")[1]
        marks = c["checkpoints"]
        in_use = sorted({m["user_rows_in_use"] for m in marks if m["user_rows_in_use"] is not None})
        rows_used = ", ".join(f"{r:,}" for r in in_use) if in_use else f"all {c['user_rows']:,}"
        state = ", ".join(f"{b / 1e6:.2f}" for b in sorted({m["state_bytes"] for m in marks}))
        rss = [m["rss_bytes"] / 2**20 for m in marks]
        auc = f"**{c['auc']:.4f}**" if c["auc"] == best else f"{c['auc']:.4f}"
        rows.append(
            f"| {run if not rows else ''} | {label} | {auc} | {rows_used} | {state} MB | "
            f"{_span(rss, 'MiB')} |"
        )
    return rows


def _span(values: list[float], unit: str) -> str:
    low, high = f"{min(values):,.0f}", f"{max(values):,.0f}"
    return f"{low} {unit} flat" if low == high else f"{low}-{high} {unit}"


def pruning_unbounded(results: dict[str, Any]) -> str:
    """Pruning on an id space that grows without bound (sections ``pruning``, part ``unbounded``,
    and ``pruning_unbounded``, the larger run): the ceiling over the stream's four quarters."""
    lines = [
        "| run | contender | AUC | user rows in use (each quarter) | snapshot bytes (each quarter) | "
        "resident memory |",
        "| --- | --- | --- | --- | --- | --- |",
        *_unbounded_rows(results["pruning"]["unbounded"]),
        *_unbounded_rows(results["pruning_unbounded"]["unbounded"]),
        "",
        f"Recorded {results['pruning']['recorded_at'][:10]} (`{results['pruning']['command']}`) and "
        f"{results['pruning_unbounded']['recorded_at'][:10]} (`{results['pruning_unbounded']['command']}`).",
    ]
    return "\n".join(lines) + "\n"


DISTILLATION = [
    ("teacher", "teacher"),
    ("student dim 4, alpha 0.9", "student, width 4, alpha 0.9 (the defaults)"),
    ("student dim 4, alpha 0.5", "student, width 4, alpha 0.5"),
    ("dim 4 alone", "width 4 alone"),
    ("student dim 3, alpha 0.9", "student, width 3, alpha 0.9"),
    ("student dim 3, alpha 0.7", "student, width 3, alpha 0.7"),
    ("student dim 3, alpha 0.5", "student, width 3, alpha 0.5"),
    ("dim 3 alone", "width 3 alone"),
    ("rows/4 alone", "a quarter of the rows alone (2^16, width 16)"),
]


def distillation(results: dict[str, Any]) -> str:
    """Students and small models against the teacher (section ``distillation``)."""
    section = results["distillation"]
    movielens, synthetic = section["movielens"]["models"], section["synthetic"]["models"]

    def ratio(model: dict[str, Any], key: str) -> str:
        return f"{model.get(key, 1):.3g}"

    def quality(model: dict[str, Any], teacher: bool) -> str:
        return f"{model['auc']:.5f}" + ("" if teacher else f" ({model['auc_below_teacher']:.5f})")

    lines = [
        "| model | params | serving fp32 | "
        f"MovieLens 100K, {section['protocol']['movielens_window']} windows: AUC (below teacher) | "
        f"synthetic, {section['synthetic']['events']:,} events: AUC (below teacher) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in DISTILLATION:
        m, y = movielens[key], synthetic[key]
        serving = (
            "1"
            if key == "teacher"
            else f"{m['serving_fp32_bytes_ratio']:.2f} / {y['serving_fp32_bytes_ratio']:.2f}"
        )
        lines.append(
            f"| {label} | {ratio(m, 'model_bytes_ratio')} | {serving} | {quality(m, key == 'teacher')} | "
            f"{quality(y, key == 'teacher')} |"
        )
    lines += ["", f"Recorded {section['recorded_at'][:10]} by `python -m benchmarks.distillation`."]
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "pruning_real": pruning_real,
    "pruning_unbounded": pruning_unbounded,
    "distillation": distillation,
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
