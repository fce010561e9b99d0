"""SIGKILL a random rank of a 2-rank job at seeded moments; torchrun restarts the group every time.

30,000 events in four partitions (time-ordered within each, so no event is late and every run sees
the same windows). ``stream-learner run --workers 2 --max-restarts 8`` is killed five times, each
time one of its ranks (both ranks are victims, in a seeded order): torchrun's elastic agent stops
the survivor, starts a new group, and the new ranks restore the newest committed snapshot. The
committed history must tile every partition (no gap, no overlap), ``events_trained`` must equal the
event count, and on the CPU in deterministic mode the final model must equal that of one
uninterrupted 2-rank run over the same input (which runs meanwhile). The kill moments come from
a seeded generator (printed, to replay a failure): while the new group starts (after both ranks
joined it), right after both are active, or after 1-5 snapshot commits, plus up to 0.2 s.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid

import numpy as np
from confluent_kafka.admin import AdminClient

from stream_learner.config import KafkaSettings
from stream_learner.snapshots.chain import newest_state
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.distributed_support import Job, job_config
from tests.support import assert_history_tiles, end_offsets, read_snapshots

EVENTS = 30_000
PARTITIONS = 4
KILLS = 5
SEED = int(os.environ.get("STREAM_LEARNER_CRASH_SEED", "20261201"))
TRAIN = "batch_size = 8\npasses = 2"
SNAPSHOT = "every_windows = 1\nfull_every = 4\nmax_message_bytes = 65536"


def test_sigkilled_ranks_restart_as_a_group_and_neither_lose_nor_repeat_training(
    kafka_bootstrap, new_topic, tmp_path
):
    rng = random.Random(SEED)
    print(f"distributed crash test seed {SEED} (set STREAM_LEARNER_CRASH_SEED to replay)")
    topic = new_topic("dist-crash-events", partitions=PARTITIONS)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    produce_synthetic(kafka, topic, EVENTS, rate=1000, backfill=True, config=SyntheticConfig(seed=13))
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    assert sum(ends.values()) == EVENTS
    tag = uuid.uuid4().hex[:8]
    names = {"crash": f"dcrash-{tag}", "ref": f"dref-{tag}"}
    configs = {
        kind: job_config(
            tmp_path / f"{kind}.toml", kafka_bootstrap, topic, name, window_seconds=0.5, train=TRAIN,
            snapshot=SNAPSHOT, extra=f'extra = {{ "group.instance.id" = "{name}-rank0" }}',
        )  # static lease membership: a restarted rank 0 takes the lease over at once
        for kind, name in names.items()
    }  # fmt: skip
    jobs: list[Job] = []
    try:
        jobs.append(reference := Job(configs["ref"], workers=2))
        jobs.append(job := Job(configs["crash"], workers=2, max_restarts=KILLS + 3))
        victims = rng.sample([0, 0, 1, 1, rng.randrange(2)], KILLS)
        gone: set[int] = set()  # the ranks of the groups killed so far

        def group_up(j: Job) -> bool:  # both ranks of a new group joined it
            return len(j.pids) == 2 and not gone & set(j.pids.values())

        for kill, victim in enumerate(victims):
            assert job.wait_until(group_up, 180), "".join(job.lines[-40:])
            pids = dict(job.pids)
            commits = job.commits
            (moment,) = rng.choices(["starting", "active", "commits"], weights=[1, 1, 3])
            if moment == "starting":  # restoring, or just done
                time.sleep(rng.uniform(0.0, 3.0))
            else:
                assert job.wait_until(lambda j, p=pids: set(p.values()) <= j.active, 180), "".join(
                    job.lines[-40:]
                )
                if moment == "commits":
                    wanted = commits + rng.randint(1, 5)
                    assert job.wait_until(lambda j, w=wanted: j.commits >= w, 120), "".join(job.lines[-40:])
                time.sleep(rng.uniform(0.0, 0.2))
            assert not job.ended(), f"the job ended before kill {kill + 1}:\n" + "".join(job.lines[-40:])
            os.kill(pids[victim], signal.SIGKILL)
            gone |= set(pids.values())
            print(f"kill {kill + 1}: rank {victim} {moment}, {job.commits - commits} commits in this group")
        job.finish(600)
        reference.finish(600)

        # every kill restarted the group, and the restarts resumed from several points of the history
        assert len(job.seen) == 2 * (KILLS + 1), job.seen
        restored = {line.split("restored model ")[1].split(" (")[0] for line in job.log("restored model")}
        assert len(restored) >= 3, restored
        summaries = job.log("stopped: model v")
        print("".join(summaries))
        stopped = [line for line in summaries if "; 0 windows trained" not in line]
        assert stopped, "the last group had nothing left to train: the kills came too late"

        states = {}
        for kind, name in names.items():
            snapshots = read_snapshots(kafka_bootstrap, f"{name}.snapshots")
            assert_history_tiles(snapshots, topic, ends)
            assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == EVENTS, kind
            states[kind] = newest_state(snapshots)
        assert states["crash"].keys() == states["ref"].keys()
        for name, tensor in states["ref"].items():
            np.testing.assert_allclose(states["crash"][name], tensor, rtol=1e-5, atol=1e-7, err_msg=name)
    finally:
        for j in jobs:
            j.kill()
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        outputs = [f"{n}.{s}" for n in names.values() for s in ("snapshots", "dlq")]
        existing = set(admin.list_topics(timeout=30).topics)
        for future in admin.delete_topics([t for t in outputs if t in existing]).values():
            future.result(60)
