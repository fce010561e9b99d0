"""Helpers for the ingest tests: messages without Kafka, valid events, and a Schema Registry stub."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stream_learner.ingest.codec import encode_event


@dataclass
class FakeMessage:
    """What the codec and the pipeline read from a confluent-kafka Message."""

    _value: bytes | None
    _partition: int = 0
    _offset: int = 0
    _topic: str = "events"
    _key: bytes | None = None
    _headers: list[tuple[str, bytes]] | None = None

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


def event(**fields: Any) -> dict[str, Any]:
    """A valid `UserEvent` record (timestamped now), with ``fields`` overriding."""
    base: dict[str, Any] = {
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
        "timestamp": int(time.time() * 1000),
        "label": None,
        "context": {},
    }
    return {**base, **fields}


def messages(values: list[bytes | None], partition: int = 0, first_offset: int = 0) -> list[FakeMessage]:
    return [FakeMessage(v, partition, first_offset + i) for i, v in enumerate(values)]


def encoded(records: list[dict[str, Any]]) -> list[bytes | None]:
    return [encode_event(r) for r in records]


@dataclass
class RegistryStub:
    """An HTTP server answering ``GET /schemas/ids/{id}`` like a Confluent Schema Registry."""

    schemas: dict[int, Any]
    url: str = ""
    requests: list[str] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    status: int = 200  # set to 500 to play a broken registry


@contextmanager
def registry_stub(schemas: dict[int, Any], tls: ssl.SSLContext | None = None) -> Iterator[RegistryStub]:
    """The stub on a free port of 127.0.0.1; over HTTPS with ``tls`` (a server-side context)."""
    stub = RegistryStub(dict(schemas))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stub.requests.append(self.path)
            stub.auth_headers.append(self.headers.get("Authorization"))
            prefix = "/schemas/ids/"
            schema_id = int(self.path[len(prefix) :]) if self.path.startswith(prefix) else -1
            if stub.status != 200:
                self._send(stub.status, {"error_code": stub.status, "message": "broken"})
            elif schema_id in stub.schemas:
                self._send(200, {"schema": json.dumps(stub.schemas[schema_id])})
            else:
                self._send(404, {"error_code": 40403, "message": "Schema not found"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # refused handshakes
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


def produce(
    bootstrap: str,
    topic: str,
    items: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
) -> list[tuple[int, int]]:
    """Produce (partition, key, value, headers) in order; return where each landed (partition, offset)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    landed: dict[int, tuple[int, int]] = {}
    errors: list[object] = []

    def delivered(index: int) -> Any:
        def callback(err: object, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                landed[index] = (msg.partition(), msg.offset())

        return callback

    for i, (partition, key, value, headers) in enumerate(items):
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    partition=partition,
                    on_delivery=delivered(i),
                )
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0 and not errors, errors[:3]
    return [landed[i] for i in range(len(items))]
