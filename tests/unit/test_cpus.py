"""Training threads follow the container's CPU quota (a fake cgroup tree stands in for /sys/fs/cgroup),
and an explicit OMP_NUM_THREADS or train.threads wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_learner.learning.cpus import available_cpus, cpu_quota, cpu_threads

NODE_CORES = 64


def cgroup_v2(tmp_path: Path, path: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup v2 tree: ``cpu.max`` per folder (relative to the root), and /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    (root / path.strip("/")).mkdir(parents=True, exist_ok=True)
    for folder, value in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(value + "\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text(f"0::{path}\n")
    return root, self_cgroup


def threads_in(root: Path, self_cgroup: Path, environ: dict[str, str] | None = None, threads: int = 0) -> int:
    cpus = available_cpus(quota=lambda: cpu_quota(root, self_cgroup), affinity=lambda: NODE_CORES)
    return cpu_threads(threads, environ or {}, lambda: cpus)


def test_a_two_cpu_container_on_a_big_node_trains_with_one_thread(tmp_path):
    # A container with its own cgroup namespace: its cgroup is the root of what it sees.
    root, self_cgroup = cgroup_v2(tmp_path, "/", {".": "200000 100000"})
    assert cpu_quota(root, self_cgroup) == 2.0
    assert threads_in(root, self_cgroup) == 1  # one CPU left to polling, not 63 threads


def test_the_smallest_limit_on_the_path_counts_and_fractions_round_up(tmp_path):
    root, self_cgroup = cgroup_v2(
        tmp_path,
        "/kubepods/pod1/learner",
        {"kubepods": "max 100000", "kubepods/pod1": "350000 100000", "kubepods/pod1/learner": "max 100000"},
    )
    assert cpu_quota(root, self_cgroup) == 3.5
    assert available_cpus(lambda: cpu_quota(root, self_cgroup), lambda: NODE_CORES) == 4
    assert threads_in(root, self_cgroup) == 3


def test_no_quota_means_the_affinity_mask(tmp_path):
    root, self_cgroup = cgroup_v2(tmp_path, "/", {".": "max 100000"})
    assert cpu_quota(root, self_cgroup) is None
    assert threads_in(root, self_cgroup) == NODE_CORES - 1
    assert available_cpus(lambda: None, lambda: 6) == 6
    assert available_cpus(lambda: 8.0, lambda: 6) == 6  # a cpuset smaller than the quota


def test_a_host_path_missing_inside_the_container_reads_the_mount_root(tmp_path):
    root, self_cgroup = cgroup_v2(tmp_path, "/", {".": "150000 100000"})
    self_cgroup.write_text("0::/system.slice/docker-abc.scope\n")
    assert cpu_quota(root, self_cgroup) == 1.5


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cpu_quota(root, self_cgroup) == 3.0
    assert threads_in(root, self_cgroup) == 2


def test_unreadable_cgroups_fall_back_to_the_affinity(tmp_path):
    assert cpu_quota(tmp_path / "none", tmp_path / "no-such-file") is None
    assert available_cpus(lambda: cpu_quota(tmp_path / "none", tmp_path / "no-such-file"), lambda: 3) == 3


@pytest.mark.parametrize(
    ("environ", "configured", "expected"),
    [
        ({"OMP_NUM_THREADS": "2"}, 0, 2),  # the deployment's variable wins over the quota
        ({"OMP_NUM_THREADS": "2"}, 5, 5),  # train.threads wins over everything
        ({"OMP_NUM_THREADS": "0"}, 0, 1),  # not a usable value: the quota decides
        ({"OMP_NUM_THREADS": "four"}, 0, 1),
    ],
)
def test_explicit_settings_win(tmp_path, environ, configured, expected):
    root, self_cgroup = cgroup_v2(tmp_path, "/", {".": "200000 100000"})
    assert threads_in(root, self_cgroup, environ, configured) == expected
