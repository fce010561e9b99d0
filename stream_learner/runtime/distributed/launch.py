"""``stream-learner run --workers N``: a job of N ranks on this host, spawned by torch.distributed.run.

The same job as ``torchrun --standalone --nproc-per-node N --max-restarts R -m stream_learner run
...`` (its rendezvous on a free local port), after the checks that would otherwise fail every rank,
and every restart, the same way: the settings a distributed job does not support, and more ranks
than input partitions (exit 2). The exit status is torchrun's.

A first SIGTERM or SIGINT goes to the ranks themselves (torchrun's children), which stop together
after the step in progress with a final snapshot and exit 0, so torchrun ends the job as a success;
torchrun, told itself, would stop the ranks the same way but exit 1 whatever they did. A second
signal goes to torchrun. Each rank gets ``OMP_NUM_THREADS`` = its share of this host's CPUs
less one for its polling loop, unless the variable is set.

torchrun is told not to share its rendezvous store with the ranks
(``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``): the shared store outlives a restart with the old
group's keys in it, and a restarted rank can read a dead rank's address from it and fail to connect
(pytorch/pytorch#135712; seen here as gloo's "connectFullMesh failed ... Connection refused" after a
SIGKILL). Without sharing, every restart's group gets a store of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from stream_learner.config import Settings
from stream_learner.kafka.admin import check_cluster
from stream_learner.learning.cpus import available_cpus
from stream_learner.runtime.distributed.start import check_partitions, check_settings


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc; none where there is no /proc)."""
    found = []
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def launched() -> bool:
    """Whether this process is a rank that torchrun started (its environment says so)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_command(workers: int, max_restarts: int, rank_argv: list[str]) -> list[str]:
    """torchrun's command line; each rank runs ``python -m stream_learner`` with ``rank_argv``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={workers}",
        f"--max-restarts={max_restarts}",
        "-m",
        "stream_learner",
        *rank_argv,
    ]


def launch(settings: Settings, workers: int, max_restarts: int, rank_argv: list[str]) -> int:
    """Run the job with ``workers`` ranks here, each with the command line ``rank_argv``;
    torchrun's exit status."""
    check_settings(settings)
    check_partitions(settings, check_cluster(settings), workers, "--workers")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // workers - 1)))
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    command = torchrun_command(workers, max_restarts, rank_argv)
    # a session of its own: a terminal's Ctrl-C reaches this process only, which passes it on
    proc = subprocess.Popen(command, env=env, start_new_session=True)

    signals = {"sent": 0}

    def forward(signum: int, _frame: object) -> None:
        ranks = children(proc.pid) if not signals["sent"] else []
        signals["sent"] += 1
        for pid in ranks or [proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    return proc.wait()
