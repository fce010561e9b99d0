"""What the process logs: librdkafka's lines through logging (repeats held back), JSON lines, the
run's summary in words, and the flags that say which cluster a command talks to."""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import pytest

from stream_learner.cli.common import with_flags
from stream_learner.cli.logs import JsonFormatter
from stream_learner.cli.parser import parse
from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.kafka.clients import LIBRDKAFKA_LOG, RepeatFilter, client_config
from stream_learner.runtime.report import Summary
from stream_learner.snapshots.format import SnapshotMeta

PACKAGE = Path(__file__).resolve().parents[2] / "stream_learner"


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("stream_learner.librdkafka", logging.ERROR, __file__, 1, message, args, None)


def test_every_kafka_client_of_the_package_logs_through_python_logging():
    """A client built from `KafkaSettings.client_config()` itself would write librdkafka's lines to
    stderr: only `kafka.clients.client_config` may call it."""
    bypassing = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "clients.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "client_config"
    ]
    assert bypassing == []
    conf = client_config(Settings().kafka, {"group.id": "g"})
    assert conf["logger"] is LIBRDKAFKA_LOG and conf["group.id"] == "g"


def test_a_repeated_librdkafka_line_is_let_through_once_per_interval_with_a_count():
    now = [0.0]
    repeats = RepeatFilter(seconds=30, clock=lambda: now[0])
    line = "%s [%s] %s"
    fail = (
        "FAIL",
        "rdkafka#consumer-1",
        "127.0.0.1:1/bootstrap: Connect failed (after {}ms in state CONNECT)",
    )

    def passes(ms: int) -> logging.LogRecord | None:
        record = _record(line, fail[0], fail[1], fail[2].format(ms))
        return record if repeats.filter(record) else None

    assert passes(0) is not None
    for t in range(1, 58):  # 20 a second, another figure in each
        now[0] = t / 2
        assert passes(t % 3) is None
    assert repeats.filter(_record("another line")) is True
    now[0] = 30.5
    summary = passes(1)
    assert summary is not None
    assert summary.getMessage().endswith("(57 more like it in the last 30 s)")


def test_json_lines_carry_level_logger_message_and_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "stream_learner.x", logging.ERROR, __file__, 1, "v%d", (3,), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "stream_learner.x" and line["message"] == "v3"
    assert line["time"].endswith("+00:00") and "ValueError: boom" in line["exception"]


def test_the_summary_says_which_version_was_restored_and_what_followed():
    summary = Summary(events=12_345, windows_trained=4, first_validation_loss=0.7, last_validation_loss=0.5)
    meta = SnapshotMeta.__new__(SnapshotMeta)
    object.__setattr__(meta, "version", 20)
    summary.started_from(20, meta)
    assert summary.line().startswith("model v20 (restored v20, 0 snapshots published); 12,345 events")
    summary.snapshots, summary.version = 3, 23
    assert "model v23 (restored v20, 3 snapshots published)" in summary.line()
    fresh = Summary()
    fresh.started_from(0, None)
    assert fresh.line().startswith("model v0 (fresh, 0 snapshots published)")


@pytest.mark.parametrize(
    ("argv", "topic"),
    [
        (["run"], "input"),
        (["produce", "synthetic"], "input"),
        (["topics", "create"], "input"),
        (["snapshots", "list"], "snapshot"),
        (["snapshots", "inspect"], "snapshot"),
        (["recommend", "--user", "u"], "snapshot"),
        (["rollback", "--accept"], "snapshot"),
        (["replay", "--version", "3"], "snapshot"),
    ],
)
def test_every_command_that_talks_to_kafka_takes_the_broker_and_topic(argv, topic, caplog):
    args = parse([*argv, "--bootstrap-server", "b1:9092,b2:9092", "--topic", "t1"])
    settings = with_flags(Settings(), args)
    assert settings.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert getattr(settings, topic).topic == "t1"
    if topic == "snapshot":
        assert with_flags(Settings(), parse([*argv, "--model", "m-1"])).model.name == "m-1"
        with pytest.raises(ConfigError, match="--model"):
            with_flags(Settings(), parse([*argv, "--model", "no spaces"]))
    caplog.clear()
    with_flags(Settings(), parse(argv))  # nothing names the brokers: the default is used, and said
    assert any("using the default, 127.0.0.1:39092" in r.getMessage() for r in caplog.records)
