"""Shared results file: every benchmark records its own section of ``results/latest.json``."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

#: Where sections are recorded; ``STREAM_LEARNER_BENCH_RESULTS`` names another file (a quick check of
#: a benchmark at small settings must not replace the recorded figures).
LATEST = Path(__file__).resolve().parent / "results" / "latest.json"
RESULTS = Path(os.environ.get("STREAM_LEARNER_BENCH_RESULTS", LATEST))


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def record(section: str, data: dict[str, Any], path: Path = RESULTS) -> None:
    """Replace ``section`` in the results file with ``data`` (stamped with time and machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[section] = {
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            **data,
        }
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
