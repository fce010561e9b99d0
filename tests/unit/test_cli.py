"""The command line's arguments: global options before or after the command, usage errors with exit
code 2 (never a traceback), --version, defaults in --help, a demo that will not delete topics on
another machine's broker unless told, and the training commands saying what to install without torch."""

from __future__ import annotations

import sys

import pytest

from stream_learner import __version__
from stream_learner.cli import main
from stream_learner.cli.demo import on_this_machine
from stream_learner.cli.parser import parse
from stream_learner.kafka.producer import Deliveries


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "run", "--config", "x.toml"],
        ["run", "--config", "x.toml", "--log-level", "debug"],
        ["produce", "synthetic", "--log-level", "DEBUG", "--events", "5"],
        ["snapshots", "list", "--log-level", "debug"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv, monkeypatch):
    monkeypatch.delenv("STREAM_LEARNER_LOG_LEVEL", raising=False)
    assert parse(argv).log_level == "DEBUG"


def test_the_log_level_before_the_command_is_kept(monkeypatch):
    monkeypatch.delenv("STREAM_LEARNER_LOG_LEVEL", raising=False)
    assert parse(["--log-level", "error", "config"]).log_level == "ERROR"
    assert parse(["config"]).log_level == "INFO"
    monkeypatch.setenv("STREAM_LEARNER_LOG_LEVEL", "warning")
    assert parse(["config"]).log_level == "WARNING"


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--log-level", "foo", "config"], None, "invalid choice: 'FOO'"),
        (["config", "--log-level", "foo"], None, "invalid choice: 'FOO'"),
        (["config"], "loud", "STREAM_LEARNER_LOG_LEVEL=LOUD"),
        (["train"], None, "invalid choice: 'train'"),
        ([], None, "required: COMMAND"),
        (["produce", "synthetic", "--events", "many"], None, "invalid int value"),
    ],
)
def test_usage_errors_exit_2_with_the_usage(argv, env, says, monkeypatch, capsys):
    if env is None:
        monkeypatch.delenv("STREAM_LEARNER_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("STREAM_LEARNER_LOG_LEVEL", env)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: stream-learner" in err and says in err
    assert "Traceback" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"stream-learner {__version__}"


def test_help_shows_defaults_and_variables(capsys):
    with pytest.raises(SystemExit):
        main(["produce", "synthetic", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "how many events (default: 10000)" in text
    assert "--bootstrap-server" in text and "--topic" in text
    assert "[env: STREAM_LEARNER_CONFIG]" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(default: INFO)" in " ".join(capsys.readouterr().out.split())


def test_demo_refuses_to_delete_topics_on_another_machines_broker(capsys):
    # Refused before anything is contacted: the address does not even resolve.
    assert main(["demo", "--bootstrap-server", "kafka.prod.invalid:9092"]) == 2
    err = capsys.readouterr().err
    assert "kafka.prod.invalid:9092 is not on this machine" in err and "--delete-topics" in err


@pytest.mark.parametrize("argv", [["run"], ["demo"], ["replay", "--version", "3"]])
def test_training_without_torch_says_which_extra_to_install(argv, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if the train extra were not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{argv[0]} trains a model, which needs torch" in err
    assert "pip install 'stream-learner[train]'" in err


def test_which_brokers_are_on_this_machine():
    assert on_this_machine("127.0.0.1:39092")
    assert on_this_machine("localhost:9092,[::1]:9093")
    assert not on_this_machine("127.0.0.1:9092,10.0.0.7:9092")
    assert not on_this_machine("broker-1:9092")


def test_a_partial_delivery_is_reported_with_its_first_error():
    assert Deliveries(delivered=500).shortfall(500) is None
    partial = Deliveries(delivered=480, failed=15, first_error="Broker: Message size too large", pending=5)
    assert partial.shortfall(500) == (
        "delivered 480 of 500 events, 15 failed, 5 unacknowledged when the flush timed out "
        "(first error: Broker: Message size too large)"
    )
