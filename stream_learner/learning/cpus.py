"""How many CPU threads training gets: what the container may use, not what the node has.

``os.cpu_count()`` counts the node's cores: a pod limited to 2 CPUs on a 64-core node would train
with 63 threads and be throttled all the time. The CPUs this process may use are the smallest of
its affinity mask (``sched_getaffinity``: cpusets, ``taskset``) and its cgroup's CPU bandwidth
limit (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), taken along
the path from the process's cgroup up to the root, rounded up to whole CPUs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs the cgroup bandwidth limit allows (quota / period, the smallest along the path), or None
    when there is no limit or no cgroup to read."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":  # cgroup v2, unified hierarchy
            limits += _v2_limits(root, path)
        elif "cpu" in controllers.split(","):  # cgroup v1, the cpu controller's hierarchy
            limits += _v1_limits(root / controllers, path)
    return min(limits) if limits else None


def _ancestors(base: Path, path: str) -> Iterator[Path]:
    """``base/path`` and each of its parents up to ``base``. Inside a container the path may be the
    host's (no cgroup namespace) and not exist under ``base``: then ``base`` itself is the cgroup."""
    here = base / path.strip("/")
    if not here.is_dir():
        here = base
    while True:
        yield here
        if here == base or base not in here.parents:
            return
        here = here.parent


def _v2_limits(root: Path, path: str) -> Iterator[float]:
    for folder in _ancestors(root, path):
        try:
            quota, period = (folder / "cpu.max").read_text().split()
        except (OSError, ValueError):
            continue
        if quota != "max" and int(period) > 0:
            yield int(quota) / int(period)


def _v1_limits(base: Path, path: str) -> Iterator[float]:
    for folder in _ancestors(base, path):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            yield quota / period


def available_cpus(
    quota: Callable[[], float | None] = cpu_quota,
    affinity: Callable[[], int] = lambda: len(os.sched_getaffinity(0)),
) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up)."""
    cpus = affinity()
    limit = quota()
    return max(1, min(cpus, math.ceil(limit))) if limit is not None else max(1, cpus)


def cpu_threads(
    configured: int,
    environ: Mapping[str, str] = os.environ,
    cpus: Callable[[], int] = available_cpus,
) -> int:
    """torch's intra-op threads (process-wide): ``train.threads`` when set, else ``OMP_NUM_THREADS``
    when set, else the CPUs this process may use but one, left to the polling loop and librdkafka."""
    if configured:
        log.info("training on %d CPU threads (train.threads)", configured)
        return configured
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        log.info("training on %s CPU threads (OMP_NUM_THREADS)", omp)
        return int(omp)
    usable = cpus()
    threads = max(1, usable - 1)
    log.info("training on %d CPU threads (%d CPUs usable, one left to polling)", threads, usable)
    return threads
