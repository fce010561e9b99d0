"""A distributed job as end-to-end tests run it: ``stream-learner run --workers N`` as a process.

`Job` starts the CLI, which spawns torchrun and its ranks, and reads the log lines of all of them as
they come: which rank has which pid (a rank logs ``rank R of N (pid P)`` when it joins, again after
every restart), which partitions it reads, and every snapshot commit. The launcher starts torchrun,
and torchrun each rank, in a session of its own, so `kill` ends every rank it saw and torchrun by
pid, then the launcher.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from stream_learner.runtime.distributed.launch import children

RANK_RE = re.compile(r"rank (\d+) of (\d+) \(pid (\d+)\), backend")
ACTIVE_RE = re.compile(r"rank (\d+) of \d+ \(pid (\d+)\), input \S+ partitions \[([\d, ]*)\]")


def job_config(
    path: Path,
    bootstrap: str,
    topic: str,
    name: str,
    *,
    window_seconds: float = 1.0,
    extra: str = "",
    train: str = "",
    snapshot: str = "",
) -> Path:
    """A learner.toml for one test: its own model, group and output topics; small windows and model."""
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{bootstrap}"
{extra}
[input]
topic = "{topic}"
group_id = "{name}"
[window]
size_seconds = {window_seconds}
allowed_lateness_seconds = 0.0
idle_timeout_seconds = 2.0
[dead_letter]
topic = "{name}.dlq"
[snapshot]
topic = "{name}.snapshots"
{snapshot}
[model]
name = "{name}"
kind = "dnn"
user_buckets = 4096
item_buckets = 1024
[train]
device = "cpu"
deterministic = true
{train}
[metrics]
port = 0
"""
    )
    return path


class Job:
    """``stream-learner run --config FILE --workers N [--exit-when-idle]`` and its log lines."""

    def __init__(
        self, config: Path, workers: int, max_restarts: int = 0, exit_when_idle: bool = True
    ) -> None:
        cmd = [
            sys.executable, "-m", "stream_learner", "run", "--config", str(config),
            "--workers", str(workers), "--max-restarts", str(max_restarts),
            *(["--exit-when-idle"] if exit_when_idle else []),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self.pids: dict[int, int] = {}  # rank -> pid of its current process
        self.seen: list[int] = []  # every rank process, over all restarts
        self.partitions: dict[int, list[int]] = {}
        self.active: set[int] = set()  # pids of the ranks that became active
        self.commits = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                if m := RANK_RE.search(line):
                    self.pids[int(m[1])] = int(m[3])
                    self.seen.append(int(m[3]))
                if m := ACTIVE_RE.search(line):
                    self.partitions[int(m[1])] = [int(p) for p in m[3].split(",") if p.strip()]
                    self.active.add(int(m[2]))
                if ") committed:" in line:
                    self.commits += 1
                self._changed.notify_all()

    def wait_until(self, condition: Callable[[Job], bool], timeout: float) -> bool:
        """Wait until ``condition`` holds (True) or the job ended or the time is up."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self) or self.ended(), timeout) and condition(
                self
            )

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        """SIGTERM to the launcher, as a supervisor stops it."""
        self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float) -> None:
        """Wait for the job to end by itself; it must exit 0."""
        code = self.proc.wait(timeout)
        self._reader.join(30)
        assert code == 0, "".join(self.lines[-60:])

    def kill(self) -> None:
        """SIGKILL every process of the job: the ranks it saw, torchrun and the launcher."""
        for pid in [*self.seen, *children(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def log(self, marker: str) -> list[str]:
        return [line for line in self.lines if marker in line]
