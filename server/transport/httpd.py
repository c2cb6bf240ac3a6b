"""A small HTTP/1.1 server on asyncio streams: keep-alive, request bodies by length or chunked
(with ``Expect: 100-continue``), complete or chunked-streaming responses, HEAD.

It serves etcd's HTTP endpoints (``etcdhttp.py``) and JSON gateway (``gateway.py``).  A handler
gets a ``Request`` and returns a ``Response`` or a ``StreamResponse``; a streamed response ends
when its chunks end or when the client goes away (its iterator is then closed).  Heads are parsed
as strictly as Go's server parses them (``httpparse.py``) and refused with its answers.

Unlike etcd (whose HTTP server has no timeouts) a connection is closed when it idles between
requests, when a request head or a body a handler waits for arrives too slowly, so a client cannot
hold a connection and its buffers forever.  Client mistakes are logged at debug level, never with
a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

from .httpconn import Body, BodyTimeout, HttpError, Timeouts
from .httpconn import Conn as _Conn
from .httpparse import MalformedRequest, RequestHead, parse_head

log = logging.getLogger("etcdlite.http")


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined by ", "
    body: Body
    peer: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


Headers = list[tuple[str, str]]


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=list)


@dataclass
class StreamResponse:
    """Sent with chunked encoding, one chunk per item of ``chunks``, flushed as it comes."""

    status: int
    chunks: AsyncIterator[bytes]
    headers: Headers = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


def text_response(status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """Go's http.Error: the text and a newline, as plain text, not sniffed."""
    return Response(status, (text + "\n").encode(), [("Content-Type", "text/plain; charset=utf-8"),
                                                      ("X-Content-Type-Options", "nosniff"), *headers])


class HttpServer:
    """Serves ``handler`` on listeners and handed-over connections; owns every connection task."""

    def __init__(self, handler: Handler, name: str = "http", timeouts: Timeouts = Timeouts()) -> None:
        self._handler = handler
        self._name = name
        self.timeouts = timeouts
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (port 0 picks one); returns the port."""
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True, ssl=ssl_context)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.serve(reader, writer)

    def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (also for connections the client-port multiplexer hands over)."""
        if self._closing:
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer), name=f"{self._name}-conn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection ---------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or "")
        try:
            while not self._closing:
                if not await self._one_request(conn, writer, peer_text):
                    break
        except MalformedRequest as exc:  # answered as Go's server does, then closed
            log.debug("refused a malformed HTTP request", extra={"fields": {
                "remote-addr": peer_text, "status": exc.status, "error": str(exc)}})
            writer.write(exc.answer())
            await _close_gently(reader, writer)
        except BodyTimeout as exc:
            log.debug("closing a slow HTTP connection", extra={"fields": {"remote-addr": peer_text,
                                                                          "error": str(exc)}})
            writer.write(MalformedRequest(408).answer())
            await _close_gently(reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:  # the client went away (also TLS errors)
            log.debug("HTTP connection ended", extra={"fields": {"remote-addr": peer_text, "error": str(exc)}})
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            log.exception("unexpected error serving an HTTP connection")
        finally:
            writer.close()

    async def _one_request(self, conn: _Conn, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Serve one request; True to keep the connection for another."""
        raw = await conn.read_head(self.timeouts)
        if raw is None:
            return False
        head = parse_head(raw)
        keep_alive = _keep_alive(head)
        body = _body(conn, writer, head, self.timeouts.body)
        request = Request(head.method, head.target, head.path or "/",
                          parse_qs(head.raw_query, keep_blank_values=True), head.version, head.headers, body, peer)
        try:
            response = await self._handler(request)
        except HttpError as exc:
            response = text_response(exc.status, exc.text)
        except BodyTimeout:
            raise  # answered by the connection, which is closed
        except ConnectionError as exc:  # the client went away in the middle of its request
            log.debug("HTTP client left during its request", extra={"fields": {
                "remote-addr": peer, "path": head.path, "error": str(exc)}})
            return False
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback, the client gets a 500
            log.exception("unexpected error in HTTP handler for %s %s", head.method, head.path)
            response = text_response(500, "Internal Server Error")
        keep_alive = keep_alive and not body.broken
        head_only = head.method == "HEAD"
        if isinstance(response, StreamResponse):
            chunked = head.at_least_11
            keep_alive = keep_alive and chunked
            finished = await self._stream(writer, response, request, conn, chunked, keep_alive, head_only,
                                          head.at_least_11)
            keep_alive = keep_alive and finished
        else:
            await self._write_response(writer, response, keep_alive, head_only, head.at_least_11)
        if keep_alive and not body.done:
            keep_alive = await body.discard(256 * 1024)
        return keep_alive

    @staticmethod
    def _status_line(status: int, http11: bool) -> str:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "status code " + str(status)
        return f"HTTP/1.{int(http11)} {status} {phrase}\r\n"

    def _head_bytes(self, status: int, headers: Headers, keep_alive: bool, http11: bool = True) -> bytes:
        lines = [self._status_line(status, http11)]  # as Go: HTTP/1.0 to a 1.0 request, else HTTP/1.1
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        lines.append(f"Date: {formatdate(usegmt=True)}\r\n")
        if http11 and not keep_alive:
            lines.append("Connection: close\r\n")
        elif not http11 and keep_alive:  # HTTP/1.0 closes unless both sides say otherwise
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _write_response(self, writer: asyncio.StreamWriter, resp: Response, keep_alive: bool,
                              head_only: bool, http11: bool = True) -> None:
        headers = [*resp.headers, ("Content-Length", str(len(resp.body)))]
        writer.write(self._head_bytes(resp.status, headers, keep_alive, http11))
        if not head_only and resp.body:
            writer.write(resp.body)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, resp: StreamResponse, request: Request, conn: _Conn,
                      chunked: bool, keep_alive: bool, head_only: bool, http11: bool) -> bool:
        """Send a streamed response; False if it was cut short (client gone, error)."""
        headers = list(resp.headers)
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        writer.write(self._head_bytes(resp.status, headers, keep_alive, http11))
        await writer.drain()
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump(writer, resp.chunks, chunked, head_only), name=f"{self._name}-stream")
        gone = loop.create_task(self._peer_gone(request.body, conn), name=f"{self._name}-watch-peer")
        try:
            await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            results = await asyncio.gather(pump, gone, return_exceptions=True)
        return results[0] is True

    @staticmethod
    async def _peer_gone(body: Body, conn: _Conn) -> None:
        await body.wait_done()
        await conn.wait_peer_gone()

    @staticmethod
    async def _pump(writer: asyncio.StreamWriter, chunks: AsyncIterator[bytes], chunked: bool,
                    head_only: bool) -> bool:
        try:
            async for data in chunks:
                if not data or head_only:
                    continue
                writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                await writer.drain()
            if chunked and not head_only:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            return True
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()


def _keep_alive(head: RequestHead) -> bool:
    tokens = {t.strip().lower() for t in head.headers.get("connection", "").split(",")}
    if not head.at_least_11:
        return "keep-alive" in tokens
    return "close" not in tokens


def _body(conn: _Conn, writer: asyncio.StreamWriter, head: RequestHead, timeout: float) -> Body:
    send_continue = None
    if head.headers.get("expect", "").lower() == "100-continue" and head.at_least_11 and (head.chunked or head.length):
        def send_continue() -> None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return Body(conn, head.length, head.chunked, send_continue, timeout)


RST_AVOIDANCE_SECONDS = 0.5  # Go's rstAvoidanceDelay


async def _close_gently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error answer: end our side, then read and drop what the client still sends for a
    moment (as Go's closeWriteAndWait), so the kernel does not reset the connection and discard the
    answer before the client has read it."""
    await _drain_quietly(writer)
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(RST_AVOIDANCE_SECONDS):
            while await reader.read(65536):
                pass
    except (OSError, TimeoutError):
        pass


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    """Send a last answer to a client that may be gone already."""
    try:
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
