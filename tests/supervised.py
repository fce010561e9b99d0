"""The learner CLI as a supervised process, as compose or Kubernetes run it: restarted when it exits.

`Supervisor` starts ``stream-learner run --config FILE``, reads its log lines as they come (commits,
exits) and starts it again a second after it exits, until `shutdown`. Each life's exit code and how
long it ran are kept, and the moment of every snapshot commit, so a test can say when the job
committed again after a fault.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RESTART_DELAY = 1.0


@dataclass
class Life:
    """One process of the supervised learner."""

    proc: subprocess.Popen[str]
    started: float
    ended: float | None = None
    code: int | None = None
    lines: list[str] = field(default_factory=list)


class Supervisor:
    """Runs the learner CLI and restarts it whenever it exits, until `shutdown`."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.lives: list[Life] = []
        self.commits: list[float] = []  # monotonic times of the snapshot commits, in order
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(kill=True)

    @property
    def current(self) -> Life | None:
        with self._changed:
            return self.lives[-1] if self.lives else None

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._stopping:
                    return
                cmd = [sys.executable, "-m", "stream_learner", "run", "--config", str(self.config)]
                proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
                life = Life(proc, time.monotonic())
                self.lives.append(life)
                self._changed.notify_all()
            self._read(life)
            code = proc.wait()
            with self._changed:
                life.ended, life.code = time.monotonic(), code
                self._changed.notify_all()
            if not self._stopping:
                time.sleep(RESTART_DELAY)

    def _read(self, life: Life) -> None:
        assert life.proc.stderr is not None
        with open(self.log, "a") as out:
            for line in life.proc.stderr:
                out.write(line)
                with self._changed:
                    life.lines.append(line)
                    if ") committed:" in line:
                        self.commits.append(time.monotonic())
                    self._changed.notify_all()

    def wait_commits_after(self, moment: float, count: int, timeout: float) -> float | None:
        """The monotonic time of the ``count``-th commit after ``moment``, waiting up to ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: len([t for t in self.commits if t > moment]) >= count, timeout)
            after = [t for t in self.commits if t > moment]
            return after[count - 1] if len(after) >= count else None

    def signal(self, signum: signal.Signals) -> Life:
        """Send ``signum`` to the running process; return its life."""
        life = self.current
        assert life is not None and life.code is None
        life.proc.send_signal(signum)
        return life

    def wait_exit(self, life: Life, timeout: float) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: life.code is not None, timeout)
            return life.code

    def shutdown(self, kill: bool = False, timeout: float = 120.0) -> int | None:
        """Stop restarting; SIGTERM (or SIGKILL) the running process and return its exit code."""
        with self._changed:
            self._stopping = True
            life = self.lives[-1] if self.lives else None
        if life is None or life.proc.poll() is not None:
            self._thread.join(30)
            return life.code if life else None
        life.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            life.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            life.proc.kill()
            life.proc.wait(30)
        self._thread.join(30)
        return life.proc.returncode

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
