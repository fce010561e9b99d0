"""The sink's waits end: work that makes no progress says so after ``delivery.stall_seconds`` and fails
the job after ``delivery.commit_timeout_seconds``, a caller waiting for room is released, and closing
abandons stuck work at once (closing after work that completes is what every shutdown test does). No
broker: nothing here reaches one."""

from __future__ import annotations

import threading
import time

import pytest

from stream_learner.config import Settings
from stream_learner.errors import CommitStalled
from stream_learner.kafka.sink import Sink
from tests.broker_support import free_port

STALL, TIMEOUT = 0.3, 1.0


def _sink() -> Sink:
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "extra": {"log_level": "0"}},
            "delivery": {"mode": "at_least_once", "stall_seconds": STALL, "commit_timeout_seconds": TIMEOUT},
        }
    )
    sink = Sink(settings, commit_offsets=lambda offsets: None)
    sink.start()
    return sink


def test_a_snapshot_that_makes_no_progress_stalls_then_fails_and_closing_does_not_wait_for_it():
    sink, stuck = _sink(), threading.Event()

    def chunks():
        stuck.wait()  # a call that never returns, as a hung send_offsets_to_transaction
        yield b""

    assert sink.stalled_for() == 0.0  # nothing queued, nothing stalled
    started = time.monotonic()
    sink.publish(chunks, b"m", {0: 1}, None, lambda: None)
    sink.publish(chunks, b"m", {0: 2}, None, lambda: None)
    time.sleep(STALL + 0.1)
    assert sink.stalled_for() >= STALL  # /readyz reads this: not ready
    sink.poll()  # not failed yet
    with pytest.raises(CommitStalled):  # a third snapshot waits for room: not for ever
        sink.publish(chunks, b"m", {0: 3}, None, lambda: None)
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 2
    closing = time.monotonic()
    sink.close(60)
    assert time.monotonic() - closing < 2, "close waited for work that cannot finish"
    stuck.set()
