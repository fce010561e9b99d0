"""The configuration every Kafka client of the package starts from.

`client_config` gives the cluster's librdkafka properties (`KafkaSettings.client_config`) plus the
``logger`` property, so that librdkafka's own log lines go through Python logging (logger
``stream_learner.librdkafka``, with the process's level, handlers and format) instead of straight to
stderr. A line repeated within `REPEAT_SECONDS` (a broker that refuses connections is reported about
20 times a second by each client) is let through once; the next one after that says how many were
held back. Every producer, consumer and admin client is built from it:

    Consumer(client_config(settings.kafka, {"group.id": group}))
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from stream_learner.config import KafkaSettings

#: The logger librdkafka's lines go to (confluent-kafka maps its syslog levels to logging's).
LIBRDKAFKA_LOG = logging.getLogger("stream_learner.librdkafka")
#: A line that repeats within this many seconds is held back and counted.
REPEAT_SECONDS = 30.0
#: Lines remembered at most; beyond, those not seen within `REPEAT_SECONDS` are forgotten.
MAX_REMEMBERED = 1000

_VARYING = re.compile(r"\d+ms\b")  # "(after 0ms in state CONNECT)": the same line, another figure


class RepeatFilter(logging.Filter):
    """Lets a line through once per ``seconds``; the next one let through counts those held back."""

    def __init__(self, seconds: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}  # line -> (let through at, held since)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, _VARYING.sub("#ms", record.getMessage()))
        with self._lock:
            now = self._clock()
            passed, held = self._seen.get(key, (-float("inf"), 0))
            if now - passed < self.seconds:
                self._seen[key] = (passed, held + 1)
                return False
            if len(self._seen) >= MAX_REMEMBERED:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.seconds}
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it in the last {now - passed:.0f} s)"
            record.args = None
        return True


LIBRDKAFKA_LOG.addFilter(RepeatFilter())


def client_config(kafka: KafkaSettings, props: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka properties for a client of the cluster ``kafka`` names, its log lines going to
    `LIBRDKAFKA_LOG`, with ``props`` (the client's own properties) on top."""
    return {**kafka.client_config(), "logger": LIBRDKAFKA_LOG, **(props or {})}
