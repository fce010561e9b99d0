"""Where the job's time goes: wall seconds per stage on each thread, and CPU time per thread.

`StageProfile` wraps the functions that make up each stage (for the duration of a `with` block) and
adds up the wall time spent in them, by the thread that ran them. Stages nest (decode runs inside the
intake step); each is reported on its own, and ``other`` is what a thread's wall time holds beyond
its outermost stages (waiting on queues, polling, bookkeeping). CPU seconds per thread come from
/proc (Linux), so the utilisation of the machine's cores shows beside the wall times, and so does
how much of the wall time the Python threads kept running between them (``python_threads_busy``: near
1 means they take turns under the GIL, and the job is as fast as their CPU time adds up to).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stream_learner.ingest.codec import Decoder
from stream_learner.ingest.windowing import CountWindower, EventTimeWindower
from stream_learner.kafka.sink import Sink
from stream_learner.kafka.source import Source
from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.realtime import RealtimeFeatures
from stream_learner.learning.trainer import Trainer
from stream_learner.runtime.commits import Commits
from stream_learner.runtime.intake import Intake
from stream_learner.snapshots import publisher
from stream_learner.snapshots.state import StateCopier

#: (owner, attribute, stage, outermost): the functions timed. An outermost stage of a thread is one
#: that no other timed function of that thread encloses.
TIMED: list[tuple[Any, str, str, bool]] = [
    (Intake, "step", "intake step", True),
    (Source, "consume", "consume", False),
    (Decoder, "decode", "decode", False),
    (EventTimeWindower, "add", "windowing", False),
    (CountWindower, "add", "windowing", False),
    (Commits, "collect", "collect results", True),
    (Commits, "snapshot_if_due", "snapshot scheduling", True),
    (Intake, "backpressure", "backpressure", True),
    (FeatureMapper, "rows", "feature mapping", False),
    (FeatureMapper, "place", "feature mapping", False),
    (RealtimeFeatures, "window", "real-time features", False),
    (RealtimeFeatures, "fold", "real-time features", False),
    (Trainer, "score", "prequential scoring", False),
    (Trainer, "train", "training", False),
    (StateCopier, "copy", "state copy", False),
    (publisher, "encode_payload", "snapshot encode", False),
    (Sink, "_publish", "publish and commit", True),
    (Sink, "_dead_letter", "dead letters", True),
]
#: The training thread's outermost work: everything `Worker._run` does for a job.
TRAINING_THREAD_WORK = (
    "feature mapping",
    "real-time features",
    "prequential scoring",
    "training",
    "state copy",
)


#: The threads Python did not start (librdkafka's, torch's), together.
NATIVE = "native (librdkafka, torch)"


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = names.get(int(tid), NATIVE)
        out[name] += (int(fields[11]) + int(fields[12])) / ticks
    return dict(out)


@dataclass
class StageProfile:
    """Wall seconds per (thread, stage) while active; `report` per 100,000 events."""

    seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    outermost: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _depth: threading.local = field(default_factory=threading.local)

    def _wrap(self, fn: Callable[..., Any], stage: str, outer: bool) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            thread = threading.current_thread().name
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[(thread, stage)] += time.perf_counter() - started
                if outer or stage in TRAINING_THREAD_WORK:
                    self.outermost[thread].add(stage)

        return timed

    @contextmanager
    def active(self) -> Iterator[StageProfile]:
        originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in TIMED]
        for (owner, name, stage, outer), (_, _, fn) in zip(TIMED, originals, strict=True):
            setattr(owner, name, self._wrap(fn, stage, outer))
        try:
            yield self
        finally:
            for owner, name, fn in originals:
                setattr(owner, name, fn)

    def mark(self) -> tuple[float, dict[tuple[str, str], float], dict[str, float]]:
        """The clock, the stage seconds and the threads' CPU seconds now (`report` takes two)."""
        return time.perf_counter(), dict(self.seconds), _thread_cpu_seconds()

    def report(self, events: int, start: Any, end: Any) -> dict[str, Any]:
        """Between two `mark`s: per thread, seconds per 100,000 events in each stage, in none of
        them (``other``), and the thread's CPU seconds; and the cores the process kept busy."""
        (t0, s0, cpu_before), (t1, s1, cpu_after) = start, end
        wall, scale = t1 - t0, 100_000 / events
        seconds = {key: value - s0.get(key, 0.0) for key, value in s1.items()}
        threads: dict[str, dict[str, float]] = defaultdict(dict)
        for (thread, stage), value in seconds.items():
            threads[thread][stage] = round(value * scale, 4)
        for thread, stages in threads.items():
            outer = sum(seconds.get((thread, s), 0.0) for s in self.outermost[thread])
            stages["other (waiting, polling, bookkeeping)"] = round(max(0.0, wall - outer) * scale, 4)
        cpu = {
            name: round((cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0)) * scale, 4)
            for name in cpu_after
        }
        total_cpu = sum(cpu_after.values()) - sum(cpu_before.values())
        native = cpu_after.get(NATIVE, 0.0) - cpu_before.get(NATIVE, 0.0)
        return {
            "seconds_per_100k_events": dict(threads),
            "cpu_seconds_per_100k_events": {k: v for k, v in cpu.items() if v > 0},
            "wall_seconds_per_100k_events": round(wall * scale, 4),
            "cores_busy": round(total_cpu / wall, 3) if wall > 0 else 0.0,
            # Near 1: the Python threads take turns (the GIL), whatever the cores; see
            # docs/decisions/closed-form-fm.md.
            "python_threads_busy": round((total_cpu - native) / wall, 3) if wall > 0 else 0.0,
            "cores": os.cpu_count(),
        }
