"""The plain parts of a distributed job: what the ranks decide from each other's facts, the windows
a rank closes only when the job says so, the commit frontier, dead letters held for rank 0, the
window quality that adds up over ranks, the launcher's command, and what the job refuses."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from stream_learner.cli import rank_argv
from stream_learner.cli.parser import parse
from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.ingest.job_windows import JobWindower
from stream_learner.ingest.windowing import NO_TIME, Window
from stream_learner.learning import quality_sums
from stream_learner.learning.learner import Learner, WindowResult
from stream_learner.learning.quality import log_loss, roc_auc
from stream_learner.runtime.dead_letters import DeadLetter
from stream_learner.runtime.distributed import letters
from stream_learner.runtime.distributed.coordinator import Coordinator, Turn
from stream_learner.runtime.distributed.launch import children, torchrun_command
from stream_learner.runtime.distributed.start import check_settings
from stream_learner.runtime.distributed.status import NEVER, Facts, LocalStatus, decide, frontier
from tests.unit.test_windowing import S, batch, spans

SIZE = 60 * S


def status(**kw: object) -> LocalStatus:
    base: dict[str, object] = dict(
        watermark_ms=0,
        idle=False,
        open_end_ms=None,
        open_lows={},
        positions={},
        closed_ms=NO_TIME,
        stop=False,
        done=False,
    )
    return LocalStatus(**{**base, **kw})  # type: ignore[arg-type]


def rows(*facts: Facts) -> np.ndarray:
    return np.array([f.row() for f in facts])


def facts(next_start: int | None = None, pending: bool = False, moved: bool = False, **kw: object) -> Facts:
    return Facts.of(status(**kw), next_start, pending, moved, overdue=False)


# -- decisions ---------------------------------------------------------------------------------
def test_the_job_closes_windows_at_the_slowest_rank_and_an_idle_rank_does_not_hold_it_back() -> None:
    d = decide(rows(facts(watermark_ms=180 * S), facts(watermark_ms=120 * S)), NO_TIME, SIZE)
    assert d.close_ms == 120 * S and d.train_start_ms is None and not d.stop
    idle_rank = facts(watermark_ms=None, idle=True)
    assert decide(rows(facts(watermark_ms=180 * S), idle_rank), NO_TIME, SIZE).close_ms == 180 * S
    assert decide(rows(facts(watermark_ms=60 * S)), 120 * S, SIZE).close_ms == 120 * S  # never back


def test_when_every_rank_is_idle_the_newest_open_window_closes() -> None:
    idle = dict(watermark_ms=None, idle=True)
    d = decide(rows(facts(open_end_ms=240 * S, **idle), facts(open_end_ms=None, **idle)), 60 * S, SIZE)
    assert d.close_ms == 240 * S and d.idle


def test_a_window_is_trained_once_every_rank_handed_over_everything_up_to_its_end() -> None:
    ready = facts(next_start=60 * S, pending=True, closed_ms=120 * S)
    empty_here = facts(next_start=None, closed_ms=120 * S)
    assert decide(rows(ready, empty_here), 120 * S, SIZE).train_start_ms == 60 * S
    late_rank = facts(next_start=None, closed_ms=60 * S)  # has not applied the horizon yet
    assert decide(rows(ready, late_rank), 120 * S, SIZE).train_start_ms is None
    earlier = facts(next_start=0, pending=True, closed_ms=120 * S)
    assert decide(rows(ready, earlier), 120 * S, SIZE).train_start_ms == 0  # the earliest first


def test_a_stop_on_any_rank_stops_all_and_done_needs_every_rank_done() -> None:
    assert decide(rows(facts(), facts(stop=True)), 0, SIZE).stop
    assert not decide(rows(facts(done=True), facts()), 0, SIZE).stop
    assert not decide(rows(facts(done=True), facts(done=True, next_start=0, pending=True)), 0, SIZE).stop
    assert decide(rows(facts(done=True), facts(done=True)), 0, SIZE).stop


def test_facts_travel_as_integers() -> None:
    f = facts(watermark_ms=None, idle=True, open_end_ms=None, moved=True)
    assert f.row()[:3] == [NEVER, 1, NO_TIME] and Facts(*f.row()) == f
    assert decide(rows(f, facts()), 0, SIZE).moved


def test_the_frontier_is_held_back_by_open_and_waiting_windows() -> None:
    s = status(positions={0: 100, 2: 50}, open_lows={0: 80})
    waiting = Window(0, SIZE, batch([]), {0: (60, 70), 2: (40, 45)}, "watermark")
    assert frontier(s, [waiting]) == {0: 60, 2: 40}
    assert frontier(s, []) == {0: 80, 2: 50}


# -- windows of a rank -------------------------------------------------------------------------
def job_windower(partitions: int = 1) -> JobWindower:
    w = JobWindower(idle_timeout_s=10.0, size_ms=SIZE, lateness_ms=0)
    w.assign(list(range(partitions)), now=0.0)
    return w


def test_a_rank_closes_windows_only_up_to_the_jobs_horizon() -> None:
    w = job_windower()
    assert w.add(batch([(10 * S, 0, 0), (200 * S, 0, 1)]), now=1).windows == []  # own watermark 200 s
    assert w.local_watermark_ms(1) == 200 * S and w.newest_open_end_ms() == 240 * S
    w.close_until(120 * S)
    assert spans(w.tick(now=1)) == [(0, SIZE)]  # [0, 60) only: the job's horizon is 120 s
    assert w.add(batch([(70 * S, 0, 2)]), now=2).late.tolist() == [True]  # closed for good, here too
    assert spans(w.flush()) == [(180 * S, 240 * S)]


def test_a_restored_rank_resumes_at_the_restored_horizon() -> None:
    w = job_windower()
    w.restore({"horizon_ms": 120 * S}, {0: 5})
    assert w.close_ms == 120 * S
    assert w.add(batch([(100 * S, 0, 3)]), now=1).replayed == 1


# -- dead letters ------------------------------------------------------------------------------
def test_dead_letters_wait_in_the_box_and_travel_as_json() -> None:
    box = letters.LetterBox(max_dead_letter_bytes=1000)
    box.dead_letter(b"\x00\xff", None, [("stream-learner.reason", b"decode"), ("h", None)])
    held = box.take()
    assert box.take() == [] and box.max_dead_letter_bytes == 1000
    assert letters.from_json(letters.to_json(held)) == [
        DeadLetter(b"\x00\xff", None, [("stream-learner.reason", b"decode"), ("h", None)])
    ]


# -- window quality over ranks -----------------------------------------------------------------
def test_loss_and_auc_add_up_over_ranks() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(5000) < 0.3).astype(np.float32)
    probs = np.clip(0.3 + 0.2 * (labels - 0.3) + 0.1 * rng.standard_normal(5000), 0.01, 0.99).astype(
        np.float32
    )
    total = quality_sums.parts(labels[:1234], probs[:1234]) + quality_sums.parts(labels[1234:], probs[1234:])
    loss, auc, count, _ = quality_sums.quality(total)
    assert count == 5000
    assert loss == pytest.approx(log_loss(labels, probs), rel=1e-12)
    assert auc == pytest.approx(roc_auc(labels, probs), abs=2e-3)
    nothing = quality_sums.quality(quality_sums.parts(labels[:0], probs[:0]))
    assert math.isnan(nothing[0]) and math.isnan(nothing[1]) and nothing[2] == 0


# -- what a job refuses, and how it is launched ------------------------------------------------
@pytest.mark.parametrize(
    ("section", "values", "setting"),
    [
        ("window", {"kind": "count"}, "window.kind"),
        ("model", {"table": "dynamic"}, "model.table"),
        ("warm_start", {"pretrained": "tables.safetensors"}, "warm_start.pretrained"),
        ("catchup", {"enabled": True}, "catchup.enabled"),
    ],
)
def test_settings_a_distributed_job_does_not_support_fail_naming_the_setting(
    section: str, values: dict[str, object], setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        check_settings(Settings.model_validate({section: values}))
    check_settings(Settings())


def test_workers_on_one_host_are_torchruns_standalone_job() -> None:
    args = parse(["--log-format", "json", "run", "--config", "l.toml", "--workers", "3", "--exit-when-idle"])
    cmd = torchrun_command(3, 5, rank_argv(args))
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--standalone", "--nproc-per-node=3", "--max-restarts=5"} <= set(cmd)
    assert cmd[cmd.index("-m", 3) :] == [
        "-m", "stream_learner", "--log-level", "INFO", "--log-format", "json",
        "run", "--config", "l.toml", "--exit-when-idle",
    ]  # fmt: skip
    flags = parse(["run", "--workers", "2", "--bootstrap-server", "b:9092", "--topic", "t"])
    assert rank_argv(flags)[4:] == ["run", "--bootstrap-server", "b:9092", "--topic", "t"]


def test_the_launcher_finds_torchruns_ranks_by_their_parent(tmp_path: Path) -> None:
    for pid, stat in {
        "10": "10 (python) S 1 10 10",
        "11": "11 (python -m torch) S 10 10 10",
        "12": "12 (a) b) (c) R 10 10 10",  # a name with spaces and parentheses
        "13": "13 (python) S 11 10 10",
    }.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(stat)
    (tmp_path / "self").mkdir()
    assert children(10, tmp_path) == [11, 12]
    assert children(99, tmp_path) == []


class _OneRank:
    """The collectives of a job of one rank (pure logic: what every rank sends comes back)."""

    rank, world = 0, 1

    def gather_ints(self, values: list[int]) -> np.ndarray:
        return np.array([list(values)], np.int64)


def test_a_rank_is_busy_while_it_trains_and_counts_the_events_it_has_not_trained() -> None:
    """What lets a rank hold its input while its window trains (window.hold_input_while_training)."""
    s = Settings.model_validate({"train": {"device": "cpu"}, "snapshot": {"every_windows": 1000}})
    learner = Learner(s)
    started, release = threading.Event(), threading.Event()
    process = learner.process

    def held(window: Window) -> WindowResult:
        started.set()
        assert release.wait(10)
        return process(window)

    learner.process = held  # type: ignore[method-assign]
    coordinator = Coordinator(s, _OneRank(), learner, copier=None, close_ms=SIZE, committed={})  # type: ignore[arg-type]
    coordinator.start()
    try:
        assert not coordinator.busy and coordinator.pending_events == 0
        window = Window(0, SIZE, batch([(k * S, 0, k) for k in range(5)]), {0: (0, 4)}, "watermark")
        coordinator.submit(Turn([window], [], status(closed_ms=SIZE, positions={0: 5})))
        assert coordinator.pending_events == 5
        assert started.wait(10)
        assert coordinator.busy and not coordinator.wait_idle(0.05)
        assert coordinator.pending_events == 5  # the window in training still counts
        release.set()
        assert coordinator.wait_idle(10)
        outputs = coordinator.outputs(10)
        assert [o.result.events for o in outputs if o.result is not None] == [5]
        assert coordinator.pending_events == 0 and not coordinator.busy
    finally:
        release.set()
        coordinator.close(10)
