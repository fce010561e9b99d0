"""Broker outages while events flow and snapshots commit: a 7 s and then a 30 s one, on a broker of
the test's own (the shared one is never stopped).

The learner CLI runs under a supervisor that restarts it whenever it exits, as compose or Kubernetes
would. During an outage the learner must say that it cannot commit (/readyz 503 or gone); once its
lease session is lost (no heartbeat for the 10 s session timeout) it must leave with exit code 3 at
once, not wait for its commit deadline; a SIGTERM must end it within its shutdown timeout; and within
15 s of the broker's return it must be committing again (docs/operations.md, Broker outages). In the
end the committed history tiles every partition and the model took in every event exactly once.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from stream_learner.config import KafkaSettings
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig
from tests.broker_support import DedicatedBroker, free_port, start_dedicated_broker
from tests.supervised import Supervisor
from tests.support import assert_history_tiles, committed_offsets, end_offsets, read_snapshots

PARTITIONS = 3
RATE = 300.0  # events per second, live, for the whole test
BACK_WITHIN = 15.0  # seconds from the broker's return to the learner's next commit
SHUTDOWN_TIMEOUT = 20.0  # delivery.shutdown_timeout_seconds of the learner here
COMMIT_TIMEOUT = 20.0  # delivery.commit_timeout_seconds
STALL = 5.0  # delivery.stall_seconds
STARTUP_TIMEOUT = 5.0  # kafka.startup_timeout_seconds
#: /readyz turns 503 (or the process is gone) within: the open window's idle close (2 s) and the stall,
#: or the lease's session timeout (10 s), whichever comes first; plus 2 s.
UNREADY_WITHIN = 12.0
#: The process running when the broker stops leaves (exit 3) within the lease's session timeout
#: (10 s) plus 4 s, well before its commit deadline (COMMIT_TIMEOUT) would end it with exit 4.
LEASE_LOST_EXIT_WITHIN = 14.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    broker = start_dedicated_broker(tmp_path_factory.mktemp("outage-broker"))
    yield broker
    broker.stop()


def _config(path: Path, bootstrap: str, topic: str, port: int) -> tuple[Path, str]:
    name = f"m-{uuid.uuid4().hex[:10]}"
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{bootstrap}"
startup_timeout_seconds = {STARTUP_TIMEOUT}
[input]
topic = "{topic}"
group_id = "g-{name}"
[window]
kind = "count"
count = 300
idle_timeout_seconds = 2.0
[dead_letter]
topic = "{name}.dlq"
[snapshot]
topic = "{name}.snapshots"
every_windows = 2
interval_seconds = 5.0
[delivery]
commit_timeout_seconds = {COMMIT_TIMEOUT}
stall_seconds = {STALL}
shutdown_timeout_seconds = {SHUTDOWN_TIMEOUT}
[model]
name = "{name}"
kind = "logistic"
user_buckets = 4096
item_buckets = 1024
[metrics]
port = {port}
"""
    )
    return path, name


def _readyz(port: int) -> int | None:
    """The status of /readyz; None when nothing answers (the process is gone or restarting)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _create_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(60)


def _outage(
    broker: DedicatedBroker, learner: Supervisor, seconds: float, port: int, sigterm_after: float | None
) -> dict[str, float]:
    """Stop the broker for ``seconds``; watch /readyz until the broker is back (and send SIGTERM to
    the process running ``sigterm_after`` s in); return the figures of this outage."""
    figures: dict[str, float] = {}
    samples: list[tuple[float, int | None]] = []
    back_up = threading.Event()

    def sample() -> None:
        while not back_up.is_set():
            samples.append((time.monotonic(), _readyz(port)))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    running = learner.current
    down = broker.stop()
    sampler.start()
    signalled, sent = None, 0.0
    while time.monotonic() - down < seconds:
        life = learner.current
        due = sigterm_after is not None and time.monotonic() - down >= sigterm_after
        if due and signalled is None and life is not None and life.code is None:
            signalled, sent = learner.signal(signal.SIGTERM), time.monotonic()
        time.sleep(0.1)
    up = broker.start()
    back_up.set()
    sampler.join(10)
    figures["down_seconds"] = up - down
    unready = [t - down for t, status in samples if status != 200]
    figures["unready_after"] = unready[0] if unready else float("inf")
    if running is not None and running.ended is not None and running.code is not None:
        figures["running_exit_code"] = running.code  # the process running when the broker stopped
        figures["running_exit_after"] = running.ended - down
    if signalled is not None:
        code = learner.wait_exit(signalled, SHUTDOWN_TIMEOUT + 30)
        assert code is not None and signalled.ended is not None, "SIGTERM did not end the learner"
        figures["sigterm_exit_seconds"] = signalled.ended - sent
        figures["sigterm_exit_code"] = code
    back = learner.wait_commits_after(up, 1, BACK_WITHIN + 30)
    figures["commit_after_return"] = back - up if back is not None else float("inf")
    return figures


def test_the_learner_commits_again_after_7_s_and_30_s_outages_and_nothing_is_lost(
    broker: DedicatedBroker, tmp_path: Path
):
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    _create_topic(broker.bootstrap, topic)
    port = free_port()
    config, name = _config(tmp_path / "learner.toml", broker.bootstrap, topic, port)
    stop_producing = threading.Event()
    produced: dict[str, Any] = {}
    producer = threading.Thread(
        target=lambda: produced.update(
            stats=produce_synthetic(
                KafkaSettings(bootstrap_servers=broker.bootstrap),
                topic,
                10**9,
                RATE,
                config=SyntheticConfig(seed=7),
                stop=stop_producing,
            )
        ),
        daemon=True,
    )
    producer.start()
    learner = Supervisor(config, tmp_path / "learner.log")
    with learner:
        assert learner.wait_commits_after(0.0, 3, 120) is not None, learner.text()[-4000:]
        short = _outage(broker, learner, 7.0, port, sigterm_after=None)
        print(f"7 s outage: {short}")
        assert short["commit_after_return"] <= BACK_WITHIN, learner.text()[-6000:]
        if "running_exit_code" in short:  # the session may outlast a short outage
            assert short["running_exit_code"] == 3, short
        long = _outage(broker, learner, 30.0, port, sigterm_after=LEASE_LOST_EXIT_WITHIN + 2)
        print(f"30 s outage: {long}")
        assert long["commit_after_return"] <= BACK_WITHIN, learner.text()[-6000:]
        assert long.get("running_exit_code") == 3, (long, learner.text()[-6000:])  # lease lost: exit 3
        assert long["running_exit_after"] <= LEASE_LOST_EXIT_WITHIN, long
        assert long["unready_after"] <= UNREADY_WITHIN, long
        assert long["sigterm_exit_seconds"] <= SHUTDOWN_TIMEOUT + 5.0, long
        assert learner.wait_commits_after(time.monotonic(), 2, 60) is not None, learner.text()[-4000:]
        stop_producing.set()
        producer.join(120)
        assert learner.shutdown() == 0, learner.text()[-4000:]
    codes = [life.code for life in learner.lives]
    print(f"exit codes of the {len(codes)} lives: {codes}")

    final = Supervisor(config, tmp_path / "final.log")
    ends = end_offsets(broker.bootstrap, topic, PARTITIONS)
    events = produced["stats"].events
    assert sum(ends.values()) == events
    _catch_up(final, broker.bootstrap, name, topic, ends)

    snapshots = read_snapshots(broker.bootstrap, f"{name}.snapshots")
    assert_history_tiles(snapshots, topic, ends)
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == events


def _catch_up(final: Supervisor, bootstrap: str, name: str, topic: str, ends: dict[int, int]) -> None:
    """Run the learner until everything produced is committed, then stop it cleanly."""
    with final:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if committed_offsets(bootstrap, f"g-{name}", topic, PARTITIONS) == ends:
                break
            time.sleep(1.0)
        assert final.shutdown() == 0, final.text()[-4000:]
    assert committed_offsets(bootstrap, f"g-{name}", topic, PARTITIONS) == ends
