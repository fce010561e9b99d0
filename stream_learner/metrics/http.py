"""A small HTTP/1.1 server for a WSGI app whose threads and connections stay bounded.

prometheus_client's own servers (``start_http_server``, ``start_wsgi_server``) and the standard
library's ``ThreadingHTTPServer`` start a thread per connection and never time a client out: 500
half-sent requests held 500 threads until their clients went away. Here one thread runs an asyncio
loop that reads every request (a slow or idle client costs a socket, not a thread) and calls the
app on a pool of ``workers`` threads, so the server never uses more than ``1 + workers`` threads
(``workers`` 0: on the loop's own thread, which saves two thread hand-overs per request when the app
is quick and holds the GIL anyway).

- A request must arrive complete (head and body), headers at most `MAX_HEADER_BYTES`, within
  ``timeout`` seconds of the connection (or of the previous response on a kept-alive connection); a
  response not taken within ``timeout`` ends the connection too. One timer per request: the answer
  is written to the socket at once, and only one the client is slow to take waits on a second.
- At most ``max_connections`` are open. A new one beyond that closes the connection that has waited
  longest for a request, so idle or stalled clients cannot lock out a scraper or a probe; only when
  none is waiting is the newcomer answered 503.
- HEAD is answered as GET without the body. With ``max_body`` (bytes), a request body of at most that
  ``Content-Length`` is read within the timeout and given to the app as ``wsgi.input``; a larger one
  is answered 413, one without a length (chunked) 411, and the connection closed. Without it,
  requests with a body are answered and the connection closed (the app only reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MAX_HEADER_BYTES = 16 << 10


class BoundedHTTPServer:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one) from ``start()`` to ``close()``."""

    def __init__(
        self,
        app: WSGIApp,
        host: str,
        port: int,
        max_connections: int = 64,
        timeout: float = 10.0,
        workers: int = 2,
        max_body: int = 0,
        name: str = "metrics-http",
    ) -> None:
        self._app = app
        self._max_connections = max_connections
        self._timeout = timeout
        self._max_body = max_body
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._sock = socket.create_server(address[:2], family=family)  # binds now: errors surface here
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._pool = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-app") if workers else None
        )
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name=name)
        self._thread.daemon = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._open: set[asyncio.StreamWriter] = set()
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # open and waiting for a request, oldest first

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def close(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
        self._sock.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, sock=self._sock, limit=MAX_HEADER_BYTES)
        finally:
            self._started.set()
        async with server:
            await self._stopping.wait()
        for writer in list(self._open):
            writer.transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max_connections and not self._make_room():
            writer.write(_response("503 Service Unavailable", [], b"too many connections\n", keep=False))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), self._timeout)
            writer.transport.abort()
            return
        self._open.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        finally:
            self._open.discard(writer)
            self._waiting.pop(writer, None)
            writer.transport.abort()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request; False when none waits."""
        if not self._waiting:
            return False
        oldest = next(iter(self._waiting))
        self._waiting.pop(oldest)
        self._open.discard(oldest)
        oldest.transport.abort()
        return True

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; True to keep the connection for another."""
        self._waiting[writer] = None
        try:
            async with asyncio.timeout(self._timeout):  # the whole request; no task, unlike wait_for
                request, refusal = await self._request(reader, writer)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return False
        finally:
            self._waiting.pop(writer, None)
        if request is None:
            status = refusal or "400 Bad Request"
            writer.write(_response(status, [], status.split(" ", 1)[1].lower().encode() + b"\n", keep=False))
            keep = False
        else:
            environ, keep = request
            assert self._loop is not None
            if self._pool is None:  # answered on the loop's thread: no hand-over, one request at a time
                status, headers, answer = self._call(environ)
            else:
                status, headers, answer = await self._loop.run_in_executor(self._pool, self._call, environ)
            writer.write(_response(status, headers, answer, keep, head=environ["REQUEST_METHOD"] == "HEAD"))
        if writer.transport.get_write_buffer_size():  # only an answer the client is slow to take waits
            try:
                async with asyncio.timeout(self._timeout):
                    await writer.drain()
            except (TimeoutError, ConnectionError):
                return False
        return keep

    async def _request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[tuple[dict[str, Any], bool] | None, str | None]:
        """The next request's environ (its body in ``wsgi.input``) and whether the client would keep
        the connection; or None and the status that refuses it (None: a bad request)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            head = b""
        self._waiting.pop(writer, None)  # no longer idle: `_make_room` leaves it be
        request = _parse(head, self.address)
        if request is None:
            return None, None
        environ, keep, length = request
        refusal = self._body_refusal(length)
        if refusal is not None:
            return None, refusal
        if length and self._max_body:
            environ["wsgi.input"] = io.BytesIO(await reader.readexactly(length))
        else:
            keep = keep and not length  # a body left unread ends the connection
        return (environ, keep), None

    def _body_refusal(self, length: int) -> str | None:
        """The status that refuses a body of ``length`` bytes (-1: no length given), or None."""
        if not self._max_body or length == 0:
            return None
        if length < 0:
            return "411 Length Required"
        return "413 Content Too Large" if length > self._max_body else None

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run the app (on a pool thread) and collect its whole answer."""
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer.update(status=status, headers=headers)

        try:
            chunks = self._app(environ, start_response)
            try:
                body = b"".join(chunks)
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()
            return answer["status"], answer["headers"], body
        except Exception as exc:  # the server must outlive a failing app
            sys.stderr.write(f"metrics endpoint: {environ['PATH_INFO']} failed: {exc!r}\n")
            return "500 Internal Server Error", [("Content-Type", "text/plain")], b"internal error\n"


def _parse(head: bytes, address: tuple[str, int]) -> tuple[dict[str, Any], bool, int] | None:
    """The WSGI environ of a request head, whether the client would keep the connection, and the
    length of its body (-1 when it has one of no stated length); None if bad."""
    first, _, rest = head.decode("latin-1").partition("\r\n")
    parts = first.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, version = parts
    headers: dict[str, str] = {}  # lower-case names; a repeated header keeps its last value
    for line in rest.split("\r\n"):
        if line:
            name, colon, value = line.partition(":")
            if not colon or not name.strip() or name[:1].isspace():
                return None
            headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": address[0],
        "SERVER_PORT": str(address[1]),
        "SERVER_PROTOCOL": version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    stated = headers.get("content-length") or "0"
    if headers.get("transfer-encoding"):
        length = -1
    elif stated.isdigit():
        length = int(stated)
    else:
        return None
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return environ, keep, length


def _response(
    status: str, headers: list[tuple[str, str]], body: bytes, keep: bool, head: bool = False
) -> bytes:
    """A whole response; for HEAD, the headers GET would have (its Content-Length too), no body."""
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    if "content-length" not in {name.lower() for name, _ in headers}:
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Connection: {'keep-alive' if keep else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)
