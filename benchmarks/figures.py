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
DOCS = [REPO / "docs" / "distributed.md"]
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


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {"distributed_throughput": distributed_throughput}


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
