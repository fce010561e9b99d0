"""A Schema Registry client for the Confluent wire format: writer schemas by id, cached.

Plain urllib: ``GET {url}/schemas/ids/{id}``. Schema ids are immutable, so a schema once fetched is
kept for the life of the process. An id the registry does not know (HTTP 404) raises `UnknownSchema`
(the message is dead-lettered); that answer is remembered for a while, for a bounded number of ids, so
a flood of bad ids does not become a flood of requests. A registry that cannot be reached raises
`RegistryUnavailable` after a few tries: that is not the message's fault, so the job stops rather than
dead-letter good events. Credentials (HTTP basic auth) never appear in errors or logs.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from stream_learner.errors import RegistryUnavailable, UnknownSchema

ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"


class SchemaRegistry:
    """Writer schemas (parsed JSON) by id."""

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        unknown_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Accept": ACCEPT}
        if auth is not None:
            self._headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        self._timeout = timeout
        self._attempts = attempts
        self._unknown_ttl = unknown_ttl
        self._clock = clock
        self._sleep = sleep
        self._schemas: dict[int, Any] = {}
        self._unknown: OrderedDict[int, tuple[float, str]] = OrderedDict()

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
        request = urllib.request.Request(self.url + path, headers=self._headers)
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(0.5 * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise UnknownSchema(f"the schema registry has nothing at {path}") from None
                problem = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500:
                    break  # 401, 403, 400: retrying will not help
            except (urllib.error.URLError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
        raise RegistryUnavailable(f"schema registry {self.url} did not answer {path}: {problem}")
