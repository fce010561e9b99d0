"""Logging of the command line: the level and format of every log line the process writes, librdkafka's
included (they go through logging, see `stream_learner.kafka.clients`).

``text`` is one human-readable line per record; ``json`` is one JSON object per line, for platforms
that ship logs to a collector: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``thread``,
``message`` and, with an exception, ``exception`` (its traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure` installs (found again by its class when called once more)."""


def configure(level: str, fmt: LogFormat) -> None:
    """Log at ``level`` to stderr in format ``fmt``. Like `logging.basicConfig`, it adds no handler
    where the root logger already has others (an embedding application's, pytest's)."""
    root = logging.getLogger()
    root.setLevel(level)
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if root.handlers and not ours:
        return
    handler = ours[0] if ours else _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    if not ours:
        root.addHandler(handler)
