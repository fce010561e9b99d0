"""What the settings tell a person: `stream-learner config` masks every secret-bearing librdkafka
property, and a bad configuration names every problem at once."""

from __future__ import annotations

import json

import pytest

from stream_learner.cli import main
from stream_learner.config import load_settings
from stream_learner.errors import ConfigError

#: The properties librdkafka flags _RK_SENSITIVE (src/rdkafka_conf.c, v2.16), and others that carry
#: credentials without the flag.
SENSITIVE = [
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "sasl.password",
    "sasl.username",
    "ssl.ca.pem",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
    "sasl.oauthbearer.extensions",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.kerberos.keytab",
    "a.property.librdkafka.adds.later",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith("STREAM_LEARNER_") and "__" in name:
            monkeypatch.delenv(name)


def test_config_masks_every_extra_but_known_tuning_properties(tmp_path, capsys):
    extras = {name: f"hunter2-{i}" for i, name in enumerate(SENSITIVE)}
    lines = [f'"{name}" = "{value}"' for name, value in extras.items()]
    path = tmp_path / "learner.toml"
    path.write_text("[kafka.extra]\n" + "\n".join(lines) + '\n"socket.timeout.ms" = "5000"\n')

    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    shown = json.loads(out)["kafka"]["extra"]
    assert shown["socket.timeout.ms"] == "5000"
    assert all(shown[name] == "**********" for name in SENSITIVE)
    conf = load_settings(path).kafka.client_config()  # revealed to librdkafka only
    assert all(conf[name] == value for name, value in extras.items())


def test_every_invalid_setting_is_reported_at_once(tmp_path, monkeypatch, capsys):
    path = tmp_path / "learner.toml"
    path.write_text(
        '[window]\nsize_seconds = -1\nsize_secs = 3\n[model]\nkind = "gbdt"\n[lr]\ninitial = 9.0\n'
    )
    monkeypatch.setenv("STREAM_LEARNER_TRAIN__BATCHSIZE", "10")

    with pytest.raises(ConfigError) as err:
        load_settings(path)
    named = [setting for setting, _ in err.value.problems]
    assert named[0] == "train.batchsize"  # from the environment
    assert set(named) >= {"window.size_seconds", "window.size_secs", "model.kind", "lr"}
    assert err.value.setting == "train.batchsize"

    assert main(["config", "--config", str(path)]) == 2
    message = capsys.readouterr().err
    for setting in ("train.batchsize", "window.size_seconds", "window.size_secs", "model.kind", "lr"):
        assert f"\n  {setting}" in message
