"""The HTTP endpoint: /metrics from a registry, /healthz and /readyz from callbacks.

/metrics is prometheus_client's own WSGI app (``make_wsgi_app``): content negotiation between the
Prometheus text format and OpenMetrics (``Accept``), gzip when asked (``Accept-Encoding``) and
``name[]`` filters. It runs on `BoundedHTTPServer`, not on prometheus_client's thread-per-connection
server, so that idle or half-sent connections cannot pile up threads. Every path answers GET and
HEAD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

from stream_learner.metrics.http import BoundedHTTPServer, WSGIApp

#: Connections open at once; beyond them the longest-waiting idle one is closed.
MAX_CONNECTIONS = 64
#: Seconds a client has to send a whole request (and to take the response).
TIMEOUT_SECONDS = 10.0


def endpoint_app(
    registry: CollectorRegistry, ready: Callable[[], bool], healthy: Callable[[], bool]
) -> WSGIApp:
    """/metrics, /healthz (200 or 503 "stalled") and /readyz (200 or 503 "not ready")."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            return _plain(
                start_response, "405 Method Not Allowed", b"use GET or HEAD\n", [("Allow", "GET, HEAD")]
            )
        if path == "/metrics":  # the server drops the body of a HEAD; the app only answers GET
            answer: Iterable[bytes] = metrics({**environ, "REQUEST_METHOD": "GET"}, start_response)
            return answer
        if path == "/healthz":
            ok = healthy()
            return _plain(
                start_response, "200 OK" if ok else "503 Service Unavailable", b"ok\n" if ok else b"stalled\n"
            )
        if path == "/readyz":
            ok = ready()
            return _plain(
                start_response,
                "200 OK" if ok else "503 Service Unavailable",
                b"ready\n" if ok else b"not ready\n",
            )
        return _plain(start_response, "404 Not Found", b"not found\n")

    return app


def _plain(
    start_response: Callable[..., Any], status: str, body: bytes, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])])
    return [body]


class MetricsServer:
    """Serves /metrics, /healthz (the loop is turning: active or standing by) and /readyz (owning
    the model and consuming) over HTTP, with bounded threads and connections."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: Callable[[], bool],
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._server = BoundedHTTPServer(
            endpoint_app(registry, ready, healthy),
            host,
            port,
            max_connections=MAX_CONNECTIONS,
            timeout=TIMEOUT_SECONDS,
        )

    @property
    def url(self) -> str:
        host, port = self._server.address
        return f"http://{host}:{port}/metrics"

    @property
    def open_connections(self) -> int:
        return self._server.open_connections

    def __enter__(self) -> MetricsServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
