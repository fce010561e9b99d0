"""A Schema Registry client for the Confluent wire format: writer schemas by id, cached.

Plain urllib: ``GET {url}/schemas/ids/{id}`` of the Confluent REST protocol. Schema ids are
immutable, so a schema once fetched is kept for the life of the process. An id the registry does
not know (HTTP 404) raises `UnknownSchema` (the message is dead-lettered); that answer is remembered
for a while, for a bounded number of ids, so a flood of bad ids does not become a flood of requests.
A registry that cannot be reached raises `RegistryUnavailable` after a few tries: that is not the
message's fault, so the job stops rather than dead-letter good events.

What managed registries need: several URLs (tried in turn, starting with the last one that
answered; a network error, a timeout or a 5xx moves on to the next), HTTPS with a private CA and a
client certificate (mutual TLS), and HTTP basic or bearer-token auth. Credentials and tokens never
appear in errors or logs.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from stream_learner.config import InputSettings
from stream_learner.errors import ConfigError, RegistryUnavailable, UnknownSchema

ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"


class SchemaRegistry:
    """Writer schemas (parsed JSON) by id, from one registry behind one or several URLs."""

    def __init__(
        self,
        urls: str | Sequence[str],
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        unknown_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        bearer_token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        listed = urls.split(",") if isinstance(urls, str) else urls
        self._url_auth: dict[str, str] = {}  # URL -> Authorization from credentials written in it
        self.urls = [self._take_credentials(u.strip().rstrip("/")) for u in listed if u.strip()]
        if not self.urls:
            raise ConfigError("input.schema_registry_url", "no URL given")
        self._headers = {"Accept": ACCEPT}
        if auth is not None and bearer_token is not None:
            raise ConfigError(
                "input.schema_registry_bearer_token", "give basic auth or a bearer token, not both"
            )
        if auth is not None:
            self._headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        if bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        self._tls = tls
        self._timeout = timeout
        self._attempts = attempts
        self._unknown_ttl = unknown_ttl
        self._clock = clock
        self._sleep = sleep
        self._preferred = 0  # index of the URL that answered last
        self._schemas: dict[int, Any] = {}
        self._unknown: OrderedDict[int, tuple[float, str]] = OrderedDict()

    def _take_credentials(self, url: str) -> str:
        """``url`` without the ``user:password@`` it may carry (kept as that URL's basic auth), so
        that no message ever shows them."""
        parts = urlsplit(url)
        if parts.username is None:
            return url
        clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        self._url_auth[clean] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        return clean

    @property
    def url(self) -> str:
        """The URL asked first (the one that answered last)."""
        return self.urls[self._preferred]

    def schema(self, schema_id: int) -> Any:
        """The writer schema with this id, as parsed JSON."""
        if schema_id in self._schemas:
            return self._schemas[schema_id]
        known = self._unknown.get(schema_id)
        if known is not None and self._clock() - known[0] < self._unknown_ttl:
            raise UnknownSchema(known[1])
        try:
            body = self._get(f"/schemas/ids/{schema_id}")
            if body.get("schemaType", "AVRO") != "AVRO":
                raise UnknownSchema(f"schema id {schema_id} is {body['schemaType']}, not AVRO")
            schema = json.loads(body["schema"])
        except UnknownSchema as exc:
            self._unknown[schema_id] = (self._clock(), str(exc))
            while len(self._unknown) > 1024:
                self._unknown.popitem(last=False)
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            problem = f"schema id {schema_id}: unexpected answer from {self.url}: {exc!r}"
            raise RegistryUnavailable(problem) from None
        self._schemas[schema_id] = schema
        return schema

    def _get(self, path: str) -> dict[str, Any]:
        """The JSON answer to ``GET path``: each URL in turn, for `attempts` rounds with a backoff."""
        problems: dict[str, str] = {}
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(0.5 * 2 ** (attempt - 1))
            for step in range(len(self.urls)):
                index = (self._preferred + step) % len(self.urls)
                url = self.urls[index]
                try:
                    answer = self._get_from(url, path)
                except _TryNext as exc:
                    problems[url] = str(exc)
                    continue
                self._preferred = index
                return answer
        tried = "; ".join(f"{url}: {problem}" for url, problem in problems.items())
        raise RegistryUnavailable(f"the schema registry did not answer {path} ({tried})")

    def _get_from(self, url: str, path: str) -> dict[str, Any]:
        auth = self._url_auth.get(url)
        headers = self._headers if auth is None else {**self._headers, "Authorization": auth}
        request = urllib.request.Request(url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._tls) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise UnknownSchema(f"the schema registry has nothing at {path}") from None
            if exc.code < 500:  # 401, 403, 400: another URL of the same registry will say the same
                raise RegistryUnavailable(f"schema registry {url} refused {path}: HTTP {exc.code}") from None
            raise _TryNext(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _TryNext(str(getattr(exc, "reason", exc))) from None


class _TryNext(Exception):
    """This URL did not answer usefully; the next one may."""


def registry_from_settings(i: InputSettings) -> SchemaRegistry:
    """The registry ``[input]`` configures (``input.format = "confluent"``)."""
    assert i.schema_registry_url is not None  # the settings insist
    password = i.schema_registry_password.get_secret_value() if i.schema_registry_password else ""
    token = i.schema_registry_bearer_token
    return SchemaRegistry(
        i.schema_registry_url,
        auth=(i.schema_registry_username, password) if i.schema_registry_username else None,
        bearer_token=token.get_secret_value() if token else None,
        timeout=i.schema_registry_timeout_seconds,
        tls=_tls_context(i),
    )


def _tls_context(i: InputSettings) -> ssl.SSLContext | None:
    """Verification against ``schema_registry_ca_location`` (else the system's CAs) and the client
    certificate; None when nothing of it is configured (urllib's defaults)."""
    if not (i.schema_registry_ca_location or i.schema_registry_certificate_location):
        return None
    try:
        context = ssl.create_default_context(cafile=i.schema_registry_ca_location)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("input.schema_registry_ca_location", f"cannot be loaded: {exc}") from None
    if i.schema_registry_certificate_location:
        key_password = i.schema_registry_key_password
        try:
            context.load_cert_chain(
                i.schema_registry_certificate_location,
                i.schema_registry_key_location,
                key_password.get_secret_value() if key_password else None,
            )
        except (OSError, ssl.SSLError) as exc:
            setting = "input.schema_registry_certificate_location"
            raise ConfigError(setting, f"certificate or key cannot be loaded: {exc}") from None
    return context
