"""Soak: the learner as its own process for ten minutes at half its maximum rate, sampled every 10 s.

    .venv/bin/python -m benchmarks.soak                 # 10 minutes, rate measured first
    .venv/bin/python -m benchmarks.soak --minutes 2 --rate 20000

1. Maximum rate: as in benchmarks/freshness.py (the same settings, a backfilled topic), unless
   ``--rate`` gives the live rate.
2. Live: ``stream-learner run`` follows a topic that a thread of this process fills at half that rate
   (synthetic events, wall-clock time stamps). Every 10 s the learner's resident memory, threads and
   open file descriptors are read from /proc, and its consumer lag and trained events from its
   metrics endpoint.

Targets: resident memory grows by less than 5% after the first minute (its largest sample after
minute one against the sample at minute one); threads and file descriptors do not grow at all.
The samples and a plot go to benchmarks/results/ (soak.json, soak.png); the summary to latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from benchmarks.freshness import max_rate, sections, toml
from benchmarks.kafka_env import bootstrap, delete_topics, new_topic, outputs
from benchmarks.results import RESULTS, record
from stream_learner.config import Settings
from stream_learner.tools.produce import produce_synthetic

PARTITIONS = 3
SAMPLE_SECONDS = 10.0
RSS_GROWTH_LIMIT = 0.05
METRICS_PORT = 19_477


def process_sample(pid: int) -> dict[str, int]:
    """Resident bytes, threads and open file descriptors of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1])  # type: ignore[index]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
    return {"rss_bytes": rss_kb * 1024, "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def scrape(url: str) -> dict[str, float]:
    """The learner's consumer lag (summed over partitions) and windows trained, from its endpoint."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()

    def total(name: str) -> float:
        return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return {
        "lag_records": total("stream_learner_consumer_lag_records"),
        "windows_trained": total("stream_learner_windows_trained_total"),
    }


def soak(address: str, rate: float, minutes: float) -> list[dict[str, Any]]:
    topic = new_topic(address, "soak", PARTITIONS)
    name = f"bench-soak-{uuid.uuid4().hex[:8]}"
    config_sections = sections(address, topic, name)
    config_sections["metrics"] = {"port": METRICS_PORT, "host": "127.0.0.1"}
    settings = Settings.model_validate(config_sections)
    seconds = minutes * 60
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    producer = threading.Thread(
        target=produce_synthetic,
        args=(settings.kafka, topic, int(rate * (seconds + 60)), rate),
        kwargs={"stop": stop},
        daemon=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "learner.toml"
        config.write_text(toml(config_sections))
        learner = subprocess.Popen(
            [sys.executable, "-m", "stream_learner", "--log-level", "WARNING", "run", "--config", str(config)]
        )
        try:
            producer.start()
            begun = time.monotonic()
            while time.monotonic() - begun < seconds:
                time.sleep(max(0.0, begun + len(samples) * SAMPLE_SECONDS - time.monotonic()))
                if learner.poll() is not None:
                    raise RuntimeError(f"the learner exited with {learner.returncode} during the soak")
                sample: dict[str, Any] = {"seconds": round(time.monotonic() - begun, 1)}
                sample |= process_sample(learner.pid)
                with contextlib.suppress(OSError):  # the endpoint may not answer yet at the start
                    sample |= scrape(f"http://127.0.0.1:{METRICS_PORT}/metrics")
                samples.append(sample)
                print(json.dumps(sample), flush=True)
        finally:
            stop.set()
            producer.join(60)
            learner.send_signal(signal.SIGTERM)
            learner.wait(120)
            delete_topics(address, [topic, *outputs(settings)])
    return samples


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth after the first minute: each quantity's largest later sample against its sample at 60 s."""
    at_minute = next(s for s in samples if s["seconds"] >= 60)
    later = [s for s in samples if s["seconds"] > at_minute["seconds"]]
    out: dict[str, Any] = {}
    for key in ("rss_bytes", "threads", "fds"):
        peak = max(s[key] for s in later)
        out[key] = {"at_1_minute": at_minute[key], "max_after": peak, "last": samples[-1][key]}
    rss = out["rss_bytes"]
    rss["growth_after_1_minute"] = round(rss["max_after"] / rss["at_1_minute"] - 1, 4)
    lags = [s["lag_records"] for s in later if "lag_records" in s]
    out["lag_records"] = {"max_after_1_minute": max(lags, default=None), "last": lags[-1] if lags else None}
    out["meets_targets"] = (
        rss["growth_after_1_minute"] < RSS_GROWTH_LIMIT
        and out["threads"]["max_after"] <= out["threads"]["at_1_minute"]
        and out["fds"]["max_after"] <= out["fds"]["at_1_minute"]
    )
    return out


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["seconds"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    series = [
        ("resident memory (MiB)", [s["rss_bytes"] / 2**20 for s in samples]),
        ("threads", [s["threads"] for s in samples]),
        ("open file descriptors", [s["fds"] for s in samples]),
        ("consumer lag (records)", [s.get("lag_records", float("nan")) for s in samples]),
    ]
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.plot(minutes, values, marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("stream-learner soak at half its maximum rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="live events/s (0: half the maximum)")
    parser.add_argument("--max-events", type=int, default=200_000, help="events for the maximum rate")
    args = parser.parse_args()
    address = bootstrap()
    maximum = max_rate(address, args.max_events) if not args.rate else None
    rate = args.rate or maximum / 2  # type: ignore[operator]
    print(f"soak at {rate:.0f} events/s for {args.minutes} minutes", flush=True)
    samples = soak(address, rate, args.minutes)
    folder = RESULTS.parent
    (folder / "soak.json").write_text(json.dumps(samples, indent=1) + "\n")
    plot(samples, folder / "soak.png")
    result = {
        "minutes": args.minutes,
        "max_events_per_second": round(maximum) if maximum else None,
        "live_events_per_second": round(rate),
        "sample_seconds": SAMPLE_SECONDS,
        "targets": {"rss_growth_after_1_minute": RSS_GROWTH_LIMIT, "threads": "flat", "fds": "flat"},
        "samples": "benchmarks/results/soak.json",
        "png": "benchmarks/results/soak.png",
        **summary(samples),
    }
    record("soak", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
