"""The scoring service under HTTP load while the learner publishes a new version every few seconds.

    .venv/bin/python -m benchmarks.serving                       # about 8 minutes on 2 cores
    STREAM_LEARNER_BENCH_RESULTS=/tmp/x.json .venv/bin/python -m benchmarks.serving --seconds 5 --rounds 1

On this machine, all at once: synthetic events produced live (``--events-per-second``); the learner
(``stream-learner run``, default model, windows of ``WINDOW_SECONDS`` and a snapshot after each, a
full one every 10th) training them; the scoring service (``stream-learner serve``, the same settings
file, following the snapshots and the input); and the load generator, hey (Debian's package,
installed when missing), on keep-alive connections. Every request scores one user against 100
items (``POST /score``).

1. Maximum rate: hey without a rate limit on ``CONNECTIONS`` connections for the span.
2. Loads, in alternated rounds (``--rounds``): 50% and 90% of that maximum, and the target rate of
   1,000 requests/s; one hey process per connection, started spread over a period, paces it
   (``-q``) and writes every request's start and latency (``-o csv``). A request failed when hey
   has no answer for it or the answer is not 200.
   Swaps are the service's own log lines (``serving model M vN``); a request is *during a swap*
   when it began from ``SWAP_BEFORE`` before such a line to ``SWAP_AFTER`` after it (reading,
   verifying and loading the snapshot come before the line, the features' rebase after it),
   *between swaps* otherwise.

Figures: per load, the median over rounds of throughput, p50 / p99 / p999 latency, p99 during and
between swaps, failed requests and swaps. Targets: p99 <= 10 ms at 1,000 requests/s; no failed
request across at least 20 swaps; p99 during swaps within 2x of between them, at every load.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.freshness import toml
from benchmarks.kafka_env import bootstrap, delete_topics, new_topic, outputs
from benchmarks.results import record
from benchmarks.rounds import median
from stream_learner.config import Settings
from stream_learner.tools.produce import produce_synthetic

PARTITIONS = 3
WINDOW_SECONDS = 5.0
CONNECTIONS = 16
CANDIDATES = 100
TARGET_RATE = 1000.0
TARGET_P99_SECONDS = 0.010
SWAP_BEFORE, SWAP_AFTER = 1.0, 0.5
MIN_SWAPS = 20
SERVE = [sys.executable, "-m", "stream_learner", "--log-format", "json", "serve"]
SWAP_LINE = re.compile(r"serving model \S+ v(\d+)")


def hey() -> str:
    """The hey binary; installed from Debian's packages when missing."""
    found = shutil.which("hey")
    if found is None:
        print("installing hey (apt-get install hey)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "hey"], check=True)
        found = shutil.which("hey")
    if found is None:
        raise SystemExit("hey is not installed and apt-get could not install it")
    return found


class Service:
    """``stream-learner serve`` in its own process, its log lines (JSON) kept with their times."""

    def __init__(self, config: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [*SERVE, "--config", str(config), "--port", str(port)],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.swaps: list[tuple[float, int]] = []  # (time, version)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if m := SWAP_LINE.search(entry.get("message", "")):
                self.swaps.append((datetime.fromisoformat(entry["time"]).timestamp(), int(m.group(1))))
            elif entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                print(f"serve: {entry['message']}", flush=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the service was not ready within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time the service has used (user and system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_hey(service: Service, binary: str, body: Path, seconds: float, rate: float | None) -> dict[str, Any]:
    """One run: every request's start (absolute time), latency and status. ``rate`` None: hey on
    `CONNECTIONS` connections as fast as they go, for ``seconds``. Else paced to ``rate`` in all:
    `CONNECTIONS` hey processes of one connection each, started a period / `CONNECTIONS` apart, so
    that requests arrive spread over each period (one hey's connections all tick together: 32 at
    once every period queue behind each other, which is hey's pacing, not the service's latency);
    as many requests as that makes in ``seconds``, any not answered counting as failed."""
    base = [binary, "-m", "POST", "-T", "application/json", "-D", str(body), "-o", "csv"]
    url = service.url + "/score"
    runs: list[tuple[list[str], int | None]]
    if rate is None:
        runs = [([*base, "-c", str(CONNECTIONS), "-z", f"{seconds}s", url], None)]
    else:
        each = max(1, round(rate * seconds / CONNECTIONS))
        args = [*base, "-c", "1", "-n", str(each), "-q", f"{rate / CONNECTIONS:.3f}", url]
        runs = [(args, each)] * CONNECTIONS
    cpu = service.cpu_seconds()
    procs = []
    for args, expected in runs:
        procs.append((subprocess.Popen(args, stdout=subprocess.PIPE, text=True), time.time(), expected))
        if rate is not None:
            time.sleep(1 / rate)  # a period (connections / rate) over the connections
    starts, latency, status, unanswered = [], [], [], 0
    for proc, began, expected in procs:
        out, _ = proc.communicate(timeout=seconds * 3 + 60)
        rows = list(csv.DictReader(io.StringIO(out)))
        starts += [began + float(r["offset"]) for r in rows]
        latency += [float(r["response-time"]) for r in rows]
        status += [int(r["status-code"]) for r in rows]
        unanswered += 0 if expected is None else expected - len(rows)
    cpu = service.cpu_seconds() - cpu
    start, took = np.array(starts), np.array(latency)
    return {
        "starts": start,
        "latency": took,
        "ok": np.array(status) == 200,
        "unanswered": unanswered,
        "seconds": float((start + took).max() - start.min()) if len(start) else seconds,
        "cpu_seconds": cpu,
    }


def summarise(run: dict[str, Any], swaps: list[tuple[float, int]]) -> dict[str, Any]:
    """Throughput, latency percentiles overall and during / between swaps, failures, swaps."""
    starts, latency, ok = run["starts"], run["latency"], run["ok"]
    lo, hi = (starts.min(), starts.max()) if len(starts) else (0.0, 0.0)
    times = np.array([t for t, _ in swaps if lo - SWAP_AFTER <= t <= hi + SWAP_BEFORE])
    during = np.zeros(len(starts), bool)
    for t in times:
        during |= (starts >= t - SWAP_BEFORE) & (starts <= t + SWAP_AFTER)

    def ms(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000, 3) if len(values) else None

    good = latency[ok]
    return {
        "requests": len(starts) + run["unanswered"],
        "requests_per_second": round(len(starts) / run["seconds"], 1),
        "failed": int((~ok).sum()) + run["unanswered"],
        "p50_ms": ms(good, 50),
        "p99_ms": ms(good, 99),
        "p999_ms": ms(good, 99.9),
        "p99_during_swaps_ms": ms(latency[ok & during], 99),
        "p99_between_swaps_ms": ms(latency[ok & ~during], 99),
        "requests_during_swaps": int(during.sum()),
        "service_cpu_ms_per_request": round(run["cpu_seconds"] * 1000 / max(len(starts), 1), 3),
        "swaps": len(times),
    }


def body_file(directory: Path) -> Path:
    path = directory / "score.json"
    items = [f"i{k}" for k in range(CANDIDATES)]
    path.write_text(json.dumps({"user": "u42", "items": items}))
    return path


def measure(address: str, seconds: float, rounds: int, events_per_second: float) -> dict[str, Any]:
    binary = hey()
    topic = new_topic(address, "serving", PARTITIONS)
    name = f"bench-serving-{uuid.uuid4().hex[:8]}"
    parts: dict[str, dict[str, object]] = {
        "kafka": {"bootstrap_servers": address},
        "input": {"topic": topic, "group_id": name},
        "window": {"size_seconds": WINDOW_SECONDS, "allowed_lateness_seconds": 0.2},
        "dead_letter": {"topic": f"{name}.dlq"},
        "snapshot": {"topic": f"{name}.snapshots", "every_windows": 1, "full_every": 10},
        "model": {"name": name},
        "metrics": {"port": 0},
    }
    settings = Settings.model_validate(parts)
    stop = threading.Event()
    producer = threading.Thread(
        target=produce_synthetic,
        args=(settings.kafka, topic, 1 << 40, events_per_second),
        kwargs={"stop": stop},
        daemon=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "learner.toml"
        config.write_text(toml(parts))
        learner = subprocess.Popen(
            [sys.executable, "-m", "stream_learner", "--log-level", "WARNING", "run", "--config", str(config)]
        )
        producer.start()
        service = Service(config, free_port())
        try:
            service.wait_ready(120)
            body = body_file(Path(tmp))
            run_hey(service, binary, body, min(seconds, 5.0), None)  # warm-up
            maxima = [
                summarise(run_hey(service, binary, body, seconds, None), service.swaps) for _ in range(rounds)
            ]
            maximum = median([m["requests_per_second"] for m in maxima])
            print(f"maximum {maximum:.0f} requests/s: {maxima}", flush=True)
            loads = {"50%": maximum * 0.5, "90%": maximum * 0.9, "1000/s": TARGET_RATE}
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in loads}
            for r in range(rounds):
                for label, rate in loads.items():
                    result = summarise(run_hey(service, binary, body, seconds, rate), service.swaps)
                    runs[label].append(result)
                    print(f"round {r + 1} at {label} ({rate:.0f}/s): {result}", flush=True)
        finally:
            stop.set()
            service.stop()
            learner.terminate()
            learner.wait(180)
            producer.join(30)
            delete_topics(address, [topic, *outputs(settings)])
    return report(maximum, maxima, runs)


def report(
    maximum: float, maxima: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Medians of the rounds per load, and whether the targets are met."""

    def med(results: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return round(median(values), 3) if values else None

    loads = {}
    for label, results in runs.items():
        keys = [k for k in results[0] if k not in ("requests", "failed", "swaps", "requests_during_swaps")]
        loads[label] = {k: med(results, k) for k in keys} | {
            "requests": sum(r["requests"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "swaps": sum(r["swaps"] for r in results),
            "rounds": len(results),
        }
        during, between = loads[label]["p99_during_swaps_ms"], loads[label]["p99_between_swaps_ms"]
        loads[label]["swap_ratio"] = round(during / between, 2) if during and between else None
    every = [*maxima, *(r for rs in runs.values() for r in rs)]
    failed, swaps = sum(r["failed"] for r in every), sum(r["swaps"] for r in every)
    target = loads["1000/s"]
    ratios = [v["swap_ratio"] for v in loads.values() if v["swap_ratio"] is not None]
    p99, rate = target["p99_ms"], target["requests_per_second"]
    targets = {
        "p99_met": p99 is not None and p99 <= TARGET_P99_SECONDS * 1000 and (rate or 0) >= 0.95 * TARGET_RATE,
        "no_failed_request": failed == 0,
        "enough_swaps": swaps >= MIN_SWAPS,
        "swap_within_2x": bool(ratios) and max(ratios) <= 2.0,
    }
    return {
        "candidates": CANDIDATES,
        "connections": CONNECTIONS,
        "window_seconds": WINDOW_SECONDS,
        "max_requests_per_second": round(maximum, 1),
        "max_runs": [
            {k: m[k] for k in ("requests_per_second", "p50_ms", "p99_ms", "failed", "swaps")} for m in maxima
        ],
        "loads": loads,
        "failed": failed,
        "swaps": swaps,
        "target_p99_ms_at_1000_per_second": TARGET_P99_SECONDS * 1000,
        "targets": targets,
        "meets_targets": all(targets.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="span of each hey run")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the loads")
    parser.add_argument(
        "--events-per-second", type=float, default=2000.0, help="events produced live for the learner"
    )
    args = parser.parse_args()
    result = measure(bootstrap(), args.seconds, args.rounds, args.events_per_second)
    record("serving", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
