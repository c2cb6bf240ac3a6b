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
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

from .httpparse import MalformedRequest, RequestHead, chunk_size, parse_head

log = logging.getLogger("etcdlite.http")

MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
_HEAD_LIMIT = MAX_HEADER_BYTES + 4096  # Go reads that much of a head before its 431
_MAX_CHUNK_LINE = 4096  # Go's chunked reader's maxLineLength
_READ_SIZE = 64 * 1024
_END_OF_HEAD = re.compile(rb"\n\r?\n")


@dataclass(frozen=True)
class Timeouts:
    """Seconds a connection may take; etcd has none of these."""

    idle: float = 120.0  # waiting for a request's first byte (keep-alive, and on a new connection)
    head: float = 30.0  # from a request's first byte to the end of its head
    body: float = 60.0  # a whole body a handler waits for (a unary gateway call's request)


class HttpError(Exception):
    """A request the server refuses before any handler: answered as Go's http.Error does."""

    def __init__(self, status: int, text: str | None = None) -> None:
        super().__init__(text or HTTPStatus(status).phrase)
        self.status = status
        self.text = text or HTTPStatus(status).phrase


class BodyTooLarge(Exception):
    """``Body.read_all`` past its limit."""


class BodyError(HttpError):
    """A request body that breaks its framing, with Go's chunked reader's words."""

    def __init__(self, text: str) -> None:
        super().__init__(400, text)


class BodyTimeout(Exception):
    """A body a handler waits for did not arrive in time: the connection is closed with a 408."""


class _Conn:
    """A connection's reader with a push-back buffer, so parsing can take exactly what it needs."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()
        self.eof = False
        self.deadline: float | None = None  # loop time by which reads must be done (TimeoutError)

    async def _fill(self) -> bool:
        if self.eof:
            return False
        if self.deadline is None:
            data = await self._reader.read(_READ_SIZE)
        else:
            async with asyncio.timeout_at(self.deadline):
                data = await self._reader.read(_READ_SIZE)
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    async def read_head(self, timeouts: Timeouts) -> bytes | None:
        """The next request head (without its empty line); None if the connection ends or idles
        before one starts. MalformedRequest: 431 past Go's limit, 408 when it comes too slowly."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + timeouts.idle
        try:
            while True:
                while self._buf[:1] in (b"\r", b"\n"):  # empty lines before a request line are ignored
                    del self._buf[:1]
                if self._buf:
                    break
                if not await self._fill():
                    return None
        except TimeoutError:
            return None
        self.deadline = loop.time() + timeouts.head
        start = 0
        try:
            while True:
                m = _END_OF_HEAD.search(self._buf, start)
                if m is not None:
                    head = bytes(self._buf[:m.start() + 1])
                    del self._buf[:m.end()]
                    return head
                if len(self._buf) > _HEAD_LIMIT:
                    raise MalformedRequest(431, why="request head too large")
                start = max(0, len(self._buf) - 2)
                if not await self._fill():
                    return None  # cut short: Go answers nothing either
        except TimeoutError:
            raise MalformedRequest(408, why=f"request head not complete within {timeouts.head}s") from None
        finally:
            self.deadline = None

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Up to and including ``sep``; None at EOF before it; BodyError past ``limit``."""
        start = 0
        while True:
            i = self._buf.find(sep, start)
            if i >= 0:
                out = bytes(self._buf[:i + len(sep)])
                del self._buf[:i + len(sep)]
                return out
            if len(self._buf) > limit:
                raise BodyError("header line too long")
            start = max(0, len(self._buf) - len(sep) + 1)
            if not await self._fill():
                return None

    async def read_some(self, n: int) -> bytes:
        """At most ``n`` bytes, at least one unless at EOF."""
        if not self._buf and not await self._fill():
            return b""
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def has_buffered(self) -> bool:
        return bool(self._buf)

    async def wait_peer_gone(self) -> None:
        """Returns once the peer closes; bytes it sends meanwhile are kept for the next request."""
        while await self._fill():
            pass


class Body:
    """A request body, read as it arrives: by Content-Length, or chunked."""

    def __init__(self, conn: _Conn, length: int, chunked: bool, send_continue: Callable[[], None] | None,
                 timeout: float = Timeouts.body) -> None:
        self._conn = conn
        self._left = length  # bytes left in the body (length) or in the current chunk (chunked)
        self._chunked = chunked
        self._send_continue = send_continue
        self.timeout = timeout  # for a body read whole (read_all, discard)
        self.broken = False  # a read timed out: the connection cannot serve another request
        self.done = not chunked and length == 0
        self._done_event = asyncio.Event()
        if self.done:
            self._done_event.set()

    def _finish(self) -> None:
        self.done = True
        self._done_event.set()

    def _broke(self, text: str) -> BodyError:
        self.broken = True
        return BodyError(text)

    async def wait_done(self) -> None:
        await self._done_event.wait()

    async def read(self) -> bytes:
        """The next piece of the body; b"" once it is all read."""
        if self.done:
            return b""
        if self._send_continue is not None:
            self._send_continue()
            self._send_continue = None
        if self._chunked and self._left == 0:
            if not await self._next_chunk():
                return b""
        data = await self._conn.read_some(self._left)
        if not data:
            self._finish()
            raise ConnectionResetError("client closed the connection inside a request body")
        self._left -= len(data)
        if self._chunked:
            if self._left == 0 and await self._conn.read_until(b"\r\n", 2) != b"\r\n":
                raise self._broke("malformed chunked encoding")
        elif self._left == 0:
            self._finish()
        return data

    async def _next_chunk(self) -> bool:
        line = await self._conn.read_until(b"\n", _MAX_CHUNK_LINE)
        if line is None:
            self._finish()
            raise ConnectionResetError("client closed the connection inside a chunked body")
        try:
            size = chunk_size(line.rstrip(b"\r\n"))
        except ValueError as exc:
            raise self._broke(str(exc)) from None
        if size == 0:
            trailers = 0
            while True:  # trailers, up to the empty line
                trailer = await self._conn.read_until(b"\n", MAX_HEADER_BYTES)
                trailers += len(trailer or b"")
                if trailer is None or trailer.rstrip(b"\r\n") == b"":
                    break
                if trailers > MAX_HEADER_BYTES:
                    raise self._broke("http: suspiciously long trailer after chunked body")
            self._finish()
            return False
        self._left = size
        return True

    async def _within(self, timeout: float, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """``read()`` with the connection's deadline set: BodyTimeout when it passes."""
        conn = self._conn
        deadline = asyncio.get_running_loop().time() + timeout
        conn.deadline = deadline if conn.deadline is None else min(conn.deadline, deadline)
        try:
            return await read()
        except TimeoutError:
            self.broken = True
            raise BodyTimeout(f"request body not complete within {timeout}s") from None
        finally:
            conn.deadline = None

    async def read_all(self, limit: int, timeout: float | None = None) -> bytes:
        """The whole body; BodyTooLarge past ``limit``, BodyTimeout if it takes over ``timeout``
        seconds (the server's body timeout by default)."""
        return await self._within(self.timeout if timeout is None else timeout, lambda: self._read_all(limit))

    async def _read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise BodyTooLarge()
            parts.append(data)

    async def discard(self, limit: int) -> bool:
        """Read what the handler left (so the connection can serve another request); False if
        more than ``limit`` was left, the body broke or it came too slowly."""
        if self._send_continue is not None or self.broken:  # e.g. the client waits for a go-ahead
            return False
        try:
            await self._within(self.timeout, lambda: self._read_all(limit))
        except (HttpError, ConnectionError, BodyTooLarge, BodyTimeout):
            return False
        return True


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
            await _drain_quietly(writer)
        except BodyTimeout as exc:
            log.debug("closing a slow HTTP connection", extra={"fields": {"remote-addr": peer_text,
                                                                          "error": str(exc)}})
            writer.write(MalformedRequest(408).answer())
            await _drain_quietly(writer)
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


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    """Send a last answer to a client that may be gone already."""
    try:
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
