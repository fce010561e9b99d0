"""One serving process's cost of a model snapshot (for `benchmarks.compression`): read its messages
from a file (each after its 4-byte big-endian length, as they are on the topic), verify and fold them
as `ModelSubscriber` does (either form), build the servable model with its own real-time features
(``follow_input=False``), then score one user against CANDIDATES items SCORE_CALLS times.

Prints JSON: ``load_seconds``, ``model_bytes`` (the arrays the model holds; the optimiser's are
dropped), ``rss_mib`` (VmRSS growth from reading the file to the model built), ``peak_rss_mib``
(VmHWM growth over the same) and ``score_us`` (median call). Imports no torch.

    python -m benchmarks.serving_load SNAPSHOT_FILE [SCORE_CALLS CANDIDATES]
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

from stream_learner.serving.model import ServableModel
from stream_learner.serving.subscriber import _load
from stream_learner.snapshots.format import Assembler, Snapshot, decode_chunk


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _read(path: Path) -> Snapshot:
    data = path.read_bytes()
    assembler, snap, at = Assembler(), None, 0
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        snap = assembler.add(decode_chunk(data[at + 4 : at + 4 + length])) or snap
        at += 4 + length
    assert snap is not None, f"no whole snapshot in {path}"
    return snap


def measure(path: Path, calls: int, candidates: int) -> dict[str, Any]:
    rss, peak = _status("VmRSS"), _status("VmHWM")
    started = time.perf_counter()
    fold, spec = _load([_read(path)])
    model = ServableModel(spec, fold.tensors)
    load = time.perf_counter() - started
    grown, peaked = _status("VmRSS") - rss, _status("VmHWM") - peak
    held = sum(a.nbytes for a in fold.tensors.values() if a.flags.writeable)
    items = [str(k) for k in range(1, candidates + 1)]
    times = []
    for k in range(calls):
        began = time.perf_counter()
        model.score(str(k % 900 + 1), items, {}, at_ms=0)
        times.append(time.perf_counter() - began)
    return {
        "load_seconds": round(load, 3),
        "model_bytes": int(held),
        "rss_mib": round(grown / 2**20, 1),
        "peak_rss_mib": round(peaked / 2**20, 1),
        "score_us": round(statistics.median(times[1:] or times) * 1e6, 1),
    }


if __name__ == "__main__":
    calls, candidates = (int(x) for x in sys.argv[2:4]) if len(sys.argv) > 3 else (200, 100)
    print(json.dumps(measure(Path(sys.argv[1]), calls, candidates)))
