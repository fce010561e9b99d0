"""Settings: TOML plus environment, and a clear error naming any bad or unknown setting."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from stream_learner.config import DeliverySettings, load_settings
from stream_learner.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith("STREAM_LEARNER_") and "__" in name:
            monkeypatch.delenv(name)


def write(tmp_path, text: str):
    path = tmp_path / "learner.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    s = load_settings(None)
    assert s.input.topic == "user-events"
    assert s.delivery.mode == "exactly_once"


def test_file_values_and_environment_override(tmp_path, monkeypatch):
    path = write(tmp_path, '[window]\nsize_seconds = 30\n[model]\nhidden = [8, 4]\nname = "a"\n')
    monkeypatch.setenv("STREAM_LEARNER_WINDOW__SIZE_SECONDS", "12.5")
    monkeypatch.setenv("STREAM_LEARNER_MODEL__HIDDEN", "[16]")
    s = load_settings(path)
    assert s.window.size_seconds == 12.5
    assert s.model.hidden == [16]
    assert s.model.name == "a"


def test_unknown_key_in_file_names_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[window]\nsize_secs = 3\n"))
    assert err.value.setting == "window.size_secs"


def test_unknown_section_in_file_names_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[windows]\nsize_seconds = 3\n"))
    assert err.value.setting == "windows"


def test_bad_value_names_the_setting(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[window]\nsize_seconds = -1\n"))
    assert err.value.setting == "window.size_seconds"
    assert "greater than 0" in str(err.value)


def test_bad_environment_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("STREAM_LEARNER_TRAIN__BATCH_SIZE", "many")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert err.value.setting == "train.batch_size"


def test_unknown_environment_key_names_it(monkeypatch):
    monkeypatch.setenv("STREAM_LEARNER_TRAIN__BATCHSIZE", "10")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert err.value.setting == "train.batchsize"
    assert "STREAM_LEARNER_TRAIN__BATCHSIZE" in str(err.value)


def test_cross_field_rule_names_its_section(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[lr]\ninitial = 1.0\nmax = 0.5\n"))
    assert err.value.setting.startswith("lr")


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[window\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml")


def test_secrets_are_hidden_but_reach_librdkafka(tmp_path):
    s = load_settings(
        write(
            tmp_path,
            '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
            'sasl_username = "svc"\nsasl_password = "hunter2"\n[kafka.extra]\n"socket.timeout.ms" = "5000"\n',
        )
    )
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.kafka)
    conf = s.kafka.client_config()
    assert conf["sasl.password"] == "hunter2"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["socket.timeout.ms"] == "5000"


def test_a_gpu_that_is_not_there_is_a_configuration_error_naming_the_setting(monkeypatch, capsys):
    """`run` with a CUDA device the host lacks exits 2 naming train.device, before touching Kafka."""
    from stream_learner.cli import main

    monkeypatch.setenv("STREAM_LEARNER_TRAIN__DEVICE", "cuda:99")
    monkeypatch.setenv("STREAM_LEARNER_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    assert main(["run"]) == 2
    assert "train.device" in capsys.readouterr().err


def test_secrets_are_masked_by_their_type_wherever_settings_are_shown(tmp_path):
    s = load_settings(
        write(
            tmp_path,
            '[kafka.extra]\n"sasl.oauthbearer.config" = "clientSecret=hunter2"\n'
            '"ssl.key.pem" = "hunter2-pem"\n"socket.timeout.ms" = "5000"\n'
            '[input]\nformat = "confluent"\nschema_registry_url = "https://svc:hunter2@registry:8081/x"\n'
            '[snapshot]\nsigning_key = "hunter2-key"\n',
        )
    )
    for shown in (repr(s), str(s), json.dumps(s.model_dump(mode="json"))):
        assert "hunter2" not in shown
    dumped = s.model_dump(mode="json")
    assert dumped["input"]["schema_registry_url"] == "https://***@registry:8081/x"
    assert dumped["kafka"]["extra"]["socket.timeout.ms"] == "5000"
    conf = s.kafka.client_config()  # revealed only to librdkafka
    assert conf["sasl.oauthbearer.config"] == "clientSecret=hunter2" and conf["ssl.key.pem"] == "hunter2-pem"
    assert s.input.schema_registry_url == "https://svc:hunter2@registry:8081/x"  # what the client uses


def test_delivery_deadlines_must_nest():
    with pytest.raises(ValidationError, match="stall_seconds"):
        DeliverySettings(stall_seconds=30, commit_timeout_seconds=30)
