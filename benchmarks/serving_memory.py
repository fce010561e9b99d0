"""Resident memory of a process serving the default model through `ModelSubscriber`: the light path
(numpy; torch never imported) against the torch path, the subscriber as it was before issue 23
(`TORCH_BASELINE`: torch imported, and the model of the version served a torch module).

    .venv/bin/python -m benchmarks.serving_memory

The default model (the defaults of [model]: FM, 2^18 buckets per table, real-time features) is
trained in this process by the learner on EVENTS synthetic events of a topic of its own, in 5 s
windows, publishing a full snapshot and deltas. Each path then runs in a fresh process (``--child``;
the torch path with the package of `TORCH_BASELINE`, unpacked from this repository's history): a
subscriber that follows the snapshot topic and the input (as a serving replica does), waits for the
newest version and for its input follower to reach the end of the input, answers REQUESTS requests
of CANDIDATES items, and reports its resident memory from /proc/self/status: VmRSS (now) and VmHWM
(the peak). Before each, a process of the same package compiles the real-time features' code into
numba's cache, so that neither path measures a compilation. Memory does not depend on what else
runs on the machine, so each path runs once. Target (issue 23): the light path's resident memory
at most 1/4 of the torch path's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.kafka_env import REPO, bootstrap, delete_topics, end_offsets, new_topic, outputs
from benchmarks.results import record
from stream_learner.config import Settings
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig

#: The last commit whose subscriber scored with torch (issue 23's "today's subscriber").
TORCH_BASELINE = "a9fcc620bc853ca70ff2c47cc7fa603063c2b45e"
EVENTS = 30_000
PARTITIONS = 3
REQUESTS = 200
CANDIDATES = 100
TARGET_RATIO = 0.25
#: Compiles (or loads) the real-time features' numba code once, into the package's cache.
WARM_UP = (
    "import numpy as np; from stream_learner.learning.realtime import Formula, RealtimeFeatures, Stream; "
    "RealtimeFeatures([('user', 8), ('item', 8)], Formula())"
    ".apply(Stream.of(np.array([[1, 2]]), np.array([5]), np.array([1.0])))"
)


def sections(address: str, topic: str, name: str) -> dict[str, Any]:
    """Every setting but [model], which keeps its defaults."""
    return {
        "kafka": {"bootstrap_servers": address},
        "input": {"topic": topic, "group_id": name},
        "window": {"size_seconds": 5.0, "allowed_lateness_seconds": 0.2, "idle_timeout_seconds": 2.0},
        "snapshot": {"topic": f"{name}.snapshots", "every_windows": 1},
        "dead_letter": {"topic": f"{name}.dlq"},
        "metrics": {"port": 0},
        "model": {"name": name},
    }


def memory_mib() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: int(status[field].split()[0]) / 1024 for key, field in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def child(config: dict[str, Any], version: int, ends: dict[int, int]) -> dict[str, Any]:
    """One serving process (see the module): its memory once it serves ``version`` with the input
    applied up to ``ends``, after REQUESTS requests. Only the subscriber's public API: the torch path
    runs it with the package of `TORCH_BASELINE`."""
    settings = Settings.model_validate(config)
    subscriber = ModelSubscriber(
        settings.kafka, settings.snapshot.topic, settings.model.name, input_settings=settings
    )
    with subscriber.start(wait=120):
        assert subscriber.wait_for_version(version, 120), subscriber.problem
        assert subscriber.input is not None and subscriber.input.wait_for(ends, 120)
        rng = np.random.default_rng(0)
        spread = 0.0
        for _ in range(REQUESTS):
            items = [f"i{k}" for k in rng.integers(0, 1000, CANDIDATES)]  # the synthetic stream's ids
            spread = max(spread, float(np.ptp(subscriber.score(f"u{rng.integers(0, 5000)}", items))))
        return {
            "version": subscriber.version,
            "torch_imported": "torch" in sys.modules,
            "score_spread": round(spread, 4),
            **{f"{k}_mib": round(v, 1) for k, v in memory_mib().items()},
        }


def serve(package: Path, config: dict[str, Any], version: int, ends: dict[int, int]) -> dict[str, Any]:
    """`child` in a fresh process that imports ``stream_learner`` from ``package`` (a folder that
    holds it), after a warm-up of numba's cache there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(REPO)])}
    subprocess.run([sys.executable, "-c", WARM_UP], cwd=package, env=env, check=True, timeout=300)
    argv = ["--child", json.dumps(config), "--version", str(version), "--ends", json.dumps(ends)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_memory", *argv],
        cwd=package,  # first on sys.path: its stream_learner
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the serving process of {package} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_package(dest: Path) -> Path:
    """The package as of `TORCH_BASELINE`, unpacked from this repository's history under ``dest``."""
    archive = ["git", "-C", str(REPO), "archive", "--format=tar", TORCH_BASELINE, "stream_learner", "schemas"]
    with tarfile.open(
        fileobj=io.BytesIO(subprocess.run(archive, check=True, capture_output=True).stdout)
    ) as tar:
        tar.extractall(dest, filter="data")
    return dest


def measure(address: str) -> dict[str, Any]:
    from stream_learner.runtime.app import App  # the learner: torch, in this process only

    topic = new_topic(address, "memory", PARTITIONS)
    name = f"bench-memory-{uuid.uuid4().hex[:6]}"
    config = sections(address, topic, name)
    settings = Settings.model_validate(config)
    try:
        produce_synthetic(
            settings.kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=9)
        )
        summary = App(settings).run(exit_when_idle=True)
        ends = end_offsets(address, topic, PARTITIONS)
        out: dict[str, Any] = {
            "events": EVENTS,
            "version": summary.version,
            "windows": summary.windows_trained,
        }
        with tempfile.TemporaryDirectory() as folder:
            packages = {"light": REPO, "torch": baseline_package(Path(folder))}
            for path, package in packages.items():
                out[path] = serve(package, config, summary.version, ends)
                print(path, out[path], flush=True)
        return out
    finally:
        delete_topics(address, [topic, *outputs(settings)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--version", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ends", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ends = {int(p): int(o) for p, o in json.loads(args.ends).items()}
        print(json.dumps(child(json.loads(args.child), args.version, ends)))
        return
    out = measure(bootstrap())
    light, heavy = out["light"], out["torch"]
    ratio = light["rss_mib"] / heavy["rss_mib"]
    record(
        "serving_memory",
        {
            "model": "the defaults of [model]: fm, 2^18 buckets per table, real-time features",
            "torch_baseline": TORCH_BASELINE,
            "requests": REQUESTS,
            "candidates": CANDIDATES,
            **out,
            "rss_ratio": round(ratio, 3),
            "peak_ratio": round(light["peak_mib"] / heavy["peak_mib"], 3),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio <= TARGET_RATIO and not light["torch_imported"],
        },
    )
    print(f"light {light['rss_mib']} MiB, torch {heavy['rss_mib']} MiB: {ratio:.3f} (target {TARGET_RATIO})")


if __name__ == "__main__":
    main()
