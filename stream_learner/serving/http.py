"""The scoring service over HTTP/JSON: `stream_learner.serving.api` on the bounded asyncio server.

Paths: ``POST /score`` and ``POST /recommend`` (`api`), ``GET /healthz`` (200 while the process
answers), ``GET /readyz`` (200 with the model and version once a model is served, and from then on
across every swap; 503 with the subscriber's ``problem`` before: a topic that does not exist, a
model name with no snapshot, every snapshot refused, the broker down) and ``GET /metrics``
(`stream_learner.metrics.service`, with the subscriber's metrics on the same registry). Answers are
JSON; an error is ``{"error": REASON}`` with 400 (a bad request), 404, 405, 411, 413 (a body over
`MAX_BODY`), 503 (no model yet) or 500.

The server (`stream_learner.metrics.http.BoundedHTTPServer`) reads every connection on one asyncio
thread and answers on ``workers`` threads, so threads and connections stay bounded whatever the
clients do; keep-alive connections are kept. A new model version swaps in under the subscriber's
lock, so a request is answered by one version, never fails or waits longer than the swap itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from stream_learner.metrics import CollectorRegistry, ServiceMetrics, metrics_app
from stream_learner.metrics.http import BoundedHTTPServer
from stream_learner.serving.api import Api, BadRequest, Limits, NotReady, Scorer, encode
from stream_learner.snapshots.format import SnapshotMeta

log = logging.getLogger(__name__)

#: Largest request body read (a score request of `api.MAX_ITEMS` ids of a few dozen bytes each).
MAX_BODY = 1 << 20
#: Connections open at once; beyond them the longest-idle one is closed.
MAX_CONNECTIONS = 512
#: Seconds a client has to send a whole request (and to take the answer).
TIMEOUT_SECONDS = 10.0

_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}
_POSTS = {"/score": "score", "/recommend": "recommend"}
_GETS = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}


class Served(Scorer, Protocol):
    """A scorer that also says whether it serves a model, and which (`ModelSubscriber`)."""

    @property
    def ready(self) -> bool: ...
    @property
    def meta(self) -> SnapshotMeta | None: ...


class ScoringServer:
    """Serves ``scorer`` on ``host:port`` (0: a free port) from ``start()`` (or ``with``) to ``close()``."""

    def __init__(
        self,
        scorer: Served,
        host: str,
        port: int,
        registry: CollectorRegistry,
        limits: Limits | None = None,
        workers: int = 0,
    ) -> None:
        """``workers``: threads that answer requests; 0 answers them on the thread that reads them
        (scoring holds the GIL, so more threads add hand-overs, not throughput)."""
        self.scorer = scorer
        self.api = Api(scorer, limits)
        self.metrics = ServiceMetrics(
            scorer.model_name,
            registry,
            newest_event_ms=lambda: m.newest_event_ms if (m := scorer.meta) is not None else None,
            ready=lambda: scorer.ready,
        )
        self._metrics_app = metrics_app(registry)
        self._server = BoundedHTTPServer(
            self.app,
            host,
            port,
            max_connections=MAX_CONNECTIONS,
            timeout=TIMEOUT_SECONDS,
            workers=workers,
            max_body=MAX_BODY,
            name="scoring-http",
        )

    @property
    def url(self) -> str:
        host, port = self._server.address
        return f"http://{host}:{port}"

    def start(self) -> ScoringServer:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> ScoringServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the WSGI app --------------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        endpoint = _POSTS.get(path) or _GETS.get(path)
        if endpoint == "metrics" and method in ("GET", "HEAD"):  # the server drops a HEAD's body
            answer: Iterable[bytes] = self._metrics_app({**environ, "REQUEST_METHOD": "GET"}, start_response)
            return answer
        code, body, headers = self._answer(endpoint, path, method, environ)
        payload = encode(body)
        start_response(_STATUS[code], [("Content-Type", "application/json"), *headers])
        self.metrics.observe(endpoint or "other", code, time.perf_counter() - started)
        return [payload]

    def _answer(
        self, endpoint: str | None, path: str, method: str, environ: dict[str, Any]
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        if endpoint is None:
            return 404, {"error": f"no such path {path}; see /score, /recommend, /readyz"}, []
        allowed = "POST" if path in _POSTS else "GET, HEAD"
        if method not in allowed.split(", "):
            return 405, {"error": f"{path} takes {allowed}"}, [("Allow", allowed)]
        if endpoint == "healthz":
            return 200, {"status": "ok"}, []
        if endpoint == "readyz":
            return self._readiness()
        handler = self.api.score if endpoint == "score" else self.api.recommend
        try:
            return 200, handler(environ["wsgi.input"].read()), []
        except BadRequest as exc:
            return 400, {"error": str(exc)}, []
        except NotReady as exc:
            return 503, {"error": str(exc)}, [("Retry-After", "1")]
        except Exception:  # the service outlives a failing request, and says so
            log.exception("%s failed", path)
            return 500, {"error": "internal error (logged)"}, []

    def _readiness(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        s = self.scorer
        version = s.version
        if s.ready and version is not None:
            return 200, {"ready": True, "model": s.model_name, "version": version}, []
        return 503, {"ready": False, "model": s.model_name, "problem": s.problem or "starting"}, []
