"""The Schema Registry client against a registry speaking the Confluent REST protocol over HTTPS on
localhost, with a private CA made here: the CA and a client certificate (mutual TLS), a bearer
token, and several URLs with failover."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream_learner.avro_schemas import load_schema
from stream_learner.config import InputSettings
from stream_learner.errors import ConfigError, RegistryUnavailable
from stream_learner.ingest.registry import SchemaRegistry, registry_from_settings
from tests.ingest_support import registry_stub

SCHEMA = load_schema("user_event")
TOKEN = "t0ken-that-must-not-leak"


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed nothing here

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


KEY_PASSWORD = "key-pass"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=cwd,
    )


def _signed(cwd: Path, name: str, ext: str, *key_options: str) -> None:
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", *key_options),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
        cwd=cwd,
    )
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"),
        *("-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext"),
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other")
    _signed(d, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", "-nodes")
    _signed(d, "client", "extendedKeyUsage=clientAuth\n", "-passout", f"pass:{KEY_PASSWORD}")
    return PKI(
        d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key", d / "other.crt"
    )


def settings(url: str, pki: PKI, **overrides: object) -> InputSettings:
    base: dict[str, object] = {
        "format": "confluent",
        "schema_registry_url": url,
        "schema_registry_ca_location": str(pki.ca),
        "schema_registry_certificate_location": str(pki.client_cert),
        "schema_registry_key_location": str(pki.client_key),
        "schema_registry_key_password": KEY_PASSWORD,
        "schema_registry_bearer_token": TOKEN,
        "schema_registry_timeout_seconds": 5,
    }
    return InputSettings.model_validate({**base, **overrides})


def _no_wait(registry: SchemaRegistry) -> SchemaRegistry:
    registry._sleep = lambda seconds: None
    return registry


def test_https_with_a_private_ca_a_client_certificate_and_a_bearer_token(pki):
    with registry_stub({1: SCHEMA}, tls=pki.server_context()) as stub:
        registry = registry_from_settings(settings(stub.url, pki))
        assert registry.schema(1) == SCHEMA
        assert stub.requests == ["/schemas/ids/1"]
        assert stub.auth_headers == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {
                "schema_registry_ca_location": None,
                "schema_registry_certificate_location": None,
                "schema_registry_key_location": None,
            },
            "CERTIFICATE_VERIFY_FAILED",
        ),
        ({"schema_registry_ca_location": "OTHER"}, "CERTIFICATE_VERIFY_FAILED"),
        (
            {"schema_registry_certificate_location": None, "schema_registry_key_location": None},
            "did not answer",
        ),
    ],
)
def test_tls_is_verified_both_ways(pki, change, says):
    """The system's CAs or another CA do not trust the registry; without a client certificate the
    registry does not trust us."""
    if change.get("schema_registry_ca_location") == "OTHER":
        change = {**change, "schema_registry_ca_location": str(pki.other_ca)}
    with registry_stub({1: SCHEMA}, tls=pki.server_context()) as stub:
        registry = _no_wait(registry_from_settings(settings(stub.url, pki, **change)))
        with pytest.raises(RegistryUnavailable, match=says) as err:
            registry.schema(1)
        assert stub.requests == []  # no request got through the handshake
        assert TOKEN not in str(err.value) and KEY_PASSWORD not in str(err.value)


def test_failover_to_the_next_url_and_stay_with_the_one_that_answers(pki):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{closed.getsockname()[1]}"  # nothing listens there
    with (
        registry_stub({1: SCHEMA, 2: SCHEMA}, tls=pki.server_context()) as broken,
        registry_stub({1: SCHEMA, 2: SCHEMA}, tls=pki.server_context()) as good,
    ):
        broken.status = 503
        registry = _no_wait(registry_from_settings(settings(f"{dead}, {broken.url},{good.url}/", pki)))
        assert registry.urls == [dead, broken.url, good.url]
        assert registry.schema(1) == SCHEMA
        assert broken.requests == ["/schemas/ids/1"] and good.requests == ["/schemas/ids/1"]
        assert registry.schema(2) == SCHEMA  # straight to the URL that answered
        assert broken.requests == ["/schemas/ids/1"] and good.requests == ["/schemas/ids/1", "/schemas/ids/2"]


def test_every_url_down_names_each_problem_and_no_secret(pki):
    with (
        registry_stub({1: SCHEMA}, tls=pki.server_context()) as a,
        registry_stub({1: SCHEMA}, tls=pki.server_context()) as b,
    ):
        a.status, b.status = 500, 502
        registry = _no_wait(registry_from_settings(settings(f"{a.url},{b.url}", pki)))
        with pytest.raises(RegistryUnavailable) as err:
            registry.schema(1)
    message = str(err.value)
    assert f"{a.url}: HTTP 500" in message and f"{b.url}: HTTP 502" in message
    assert len(a.requests) == len(b.requests) == 3  # three rounds over both
    assert TOKEN not in message


def test_a_refusal_is_not_retried_elsewhere(pki):
    with (
        registry_stub({1: SCHEMA}, tls=pki.server_context()) as a,
        registry_stub({1: SCHEMA}, tls=pki.server_context()) as b,
    ):
        a.status = 401
        registry = _no_wait(registry_from_settings(settings(f"{a.url},{b.url}", pki)))
        with pytest.raises(RegistryUnavailable, match="HTTP 401"):
            registry.schema(1)
        assert b.requests == []


def test_settings_that_cannot_work_are_refused_at_start(pki, tmp_path):
    with pytest.raises(ValueError, match="exclude each other"):
        settings("https://r", pki, schema_registry_username="svc")
    with pytest.raises(ValueError, match="needs schema_registry_certificate_location"):
        settings("https://r", pki, schema_registry_certificate_location=None)
    with pytest.raises(ConfigError, match=r"schema_registry_certificate_location.*cannot be loaded"):
        registry_from_settings(settings("https://r", pki, schema_registry_key_password="wrong"))
    with pytest.raises(ConfigError, match="schema_registry_ca_location"):
        registry_from_settings(
            settings("https://r", pki, schema_registry_ca_location=str(tmp_path / "none.pem"))
        )


def test_credentials_written_in_a_url_authenticate_and_never_show(pki):
    with (
        registry_stub({1: SCHEMA}, tls=pki.server_context()) as a,
        registry_stub({1: SCHEMA}, tls=pki.server_context()) as b,
    ):
        with_user = a.url.replace("https://", "https://alice:s%40cret@")
        registry = _no_wait(
            registry_from_settings(settings(f"{with_user},{b.url}", pki, schema_registry_bearer_token=None))
        )
        assert registry.schema(1) == SCHEMA
        assert a.auth_headers == ["Basic " + base64.b64encode(b"alice:s@cret").decode()]
        a.status = b.status = 503
        with pytest.raises(RegistryUnavailable) as err:
            registry.schema(2)
    assert registry.urls == [a.url, b.url]
    assert "cret" not in str(err.value) and "alice" not in str(err.value)
