"""Documentation that is generated from code stays equal to it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from stream_learner.cli import main
from stream_learner.cli.reference import render
from stream_learner.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLI = Path(__file__).resolve().parents[2] / "stream_learner" / "cli"


def test_the_configuration_reference_is_current():
    assert (DOCS / "configuration.md").read_text() == render() + "\n", (
        "docs/configuration.md is stale: run `stream-learner config --reference > docs/configuration.md`"
    )


def test_every_setting_is_described():
    for section, field in Settings.model_fields.items():
        for key, info in field.annotation.model_fields.items():
            assert info.description, f"{section}.{key} has no description"


def test_config_command_hides_secrets(capsys, monkeypatch, tmp_path):
    path = tmp_path / "learner.toml"
    path.write_text(
        '[kafka.extra]\n"sasl.oauthbearer.client.secret" = "s3cret"\n"socket.timeout.ms" = "5000"\n'
        '"sasl.oauthbearer.config" = "clientSecret=s3cret-too"\n'
    )
    monkeypatch.setenv("STREAM_LEARNER_KAFKA__SASL_PASSWORD", "hunter2")
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cret" not in out  # s3cret-too as well
    shown = json.loads(out)
    assert shown["kafka"]["extra"]["socket.timeout.ms"] == "5000"
    assert shown["kafka"]["sasl_password"] == "**********"


def test_every_exit_code_of_the_cli_is_in_the_runbooks_table():
    """docs/operations.md lists every code a command returns: the ``EXIT_*`` constants and literal
    ``return N`` / ``exit(N)`` of stream_learner/cli/, 1 for an unexpected error and 128+N for
    signals."""
    source = "\n".join(path.read_text() for path in sorted(CLI.glob("*.py")))
    codes = {int(c) for c in re.findall(r"^EXIT_\w+ = (\d+)", source, re.MULTILINE)}
    codes |= {int(c) for c in re.findall(r"(?:return|exit\()\s*(\d+)\b", source)}
    assert {0, 1, 2, 3, 4, 5} <= codes, codes  # the scan finds what is there
    runbook = (DOCS / "operations.md").read_text()
    table = {row.split("`")[1] for row in re.findall(r"^\| `[^`]+` \|.*$", runbook, re.MULTILINE)}
    missing = {str(c) for c in codes} - table
    assert not missing, f"exit codes missing from docs/operations.md's table: {sorted(missing)}"
    assert "128+N" in table
