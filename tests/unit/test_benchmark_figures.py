"""The benchmark figures quoted in the docs are those of benchmarks/results/latest.json, and every
contender's figure is the median of its rounds (`python -m benchmarks.figures` renders them)."""

from __future__ import annotations

import json

from benchmarks import figures
from benchmarks.results import RESULTS
from benchmarks.rounds import median, median_round


def test_the_docs_quote_the_recorded_figures():
    results = json.loads(RESULTS.read_text())
    for doc in figures.DOCS:
        text = doc.read_text()
        names = [m[2] for m in figures.BLOCK.finditer(text)]
        assert names, f"{doc} has no figures block"
        assert figures.render(text, results) == text, (
            f"{doc.name} quotes figures that are not latest.json's: run python -m benchmarks.figures"
        )


def test_a_figures_block_shows_the_median_round_not_the_best():
    rounds = {
        how: [{"events_per_second": v} for v in values]
        for how, values in {
            "process": [300, 100, 200], "process/8192": [1, 2, 3], "1-rank": [5, 9, 7],
            "2-ranks": [4, 4, 6], "2-ranks/8192": [8, 8, 8],
        }.items()
    }  # fmt: skip
    section = {"rounds": rounds, "events": 9, "partitions": 2, "model": "m", "recorded_at": "2026-01-02T03"}
    text = "a\n<!-- figures: distributed_throughput -->\nstale | 77,121\n<!-- /figures -->\nb\n"
    shown = figures.render(text, {"distributed_throughput": section})
    assert "| one process (`stream-learner run`) | 200 | 2 |" in shown
    assert "| 1 rank (torchrun) | 7 |  |" in shown and "77,121" not in shown
    assert shown.startswith("a\n<!-- figures: distributed_throughput -->\n") and shown.endswith("-->\nb\n")
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert median_round([{"x": 3}, {"x": 1}, {"x": 2}, {"x": 10}], key=lambda r: r["x"]) == {"x": 2}
