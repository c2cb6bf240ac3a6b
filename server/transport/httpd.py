"""A small HTTP/1.1 server on asyncio streams: keep-alive, request bodies by length or chunked
(with ``Expect: 100-continue``), complete or chunked-streaming responses, HEAD.

It serves etcd's HTTP endpoints (``etcdhttp.py``) and JSON gateway (``gateway.py``).  A handler
gets a ``Request`` and returns a ``Response`` or a ``StreamResponse``; a streamed response ends
when its chunks end or when the client goes away (its iterator is then closed).  Texts of the
server's own errors are Go net/http's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("etcdlite.http")

MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
_READ_SIZE = 64 * 1024


class HttpError(Exception):
    """A request the server refuses before any handler: answered as Go's http.Error does."""

    def __init__(self, status: int, text: str | None = None) -> None:
        super().__init__(text or HTTPStatus(status).phrase)
        self.status = status
        self.text = text or HTTPStatus(status).phrase


class BodyTooLarge(Exception):
    """``Body.read_all`` past its limit."""


class _Conn:
    """A connection's reader with a push-back buffer, so parsing can take exactly what it needs."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        if self.eof:
            return False
        data = await self._reader.read(_READ_SIZE)
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Up to and including ``sep``; None at EOF before it; HttpError(431) past ``limit``."""
        start = 0
        while True:
            i = self._buf.find(sep, start)
            if i >= 0:
                out = bytes(self._buf[:i + len(sep)])
                del self._buf[:i + len(sep)]
                return out
            if len(self._buf) > limit:
                raise HttpError(431)
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

    async def wait_peer_gone(self) -> None:
        """Returns once the peer closes; bytes it sends meanwhile are kept for the next request."""
        while await self._fill():
            pass


class Body:
    """A request body, read as it arrives: by Content-Length, or chunked."""

    def __init__(self, conn: _Conn, length: int, chunked: bool, send_continue: Callable[[], None] | None) -> None:
        self._conn = conn
        self._left = length  # bytes left in the body (length) or in the current chunk (chunked)
        self._chunked = chunked
        self._send_continue = send_continue
        self.done = not chunked and length == 0
        self._done_event = asyncio.Event()
        if self.done:
            self._done_event.set()

    def _finish(self) -> None:
        self.done = True
        self._done_event.set()

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
                raise HttpError(400, "malformed chunked encoding")
        elif self._left == 0:
            self._finish()
        return data

    async def _next_chunk(self) -> bool:
        line = await self._conn.read_until(b"\r\n", 4096)
        if line is None:
            self._finish()
            raise ConnectionResetError("client closed the connection inside a chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "malformed chunked encoding") from None
        if size < 0:
            raise HttpError(400, "malformed chunked encoding")
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await self._conn.read_until(b"\r\n", MAX_HEADER_BYTES)
                if trailer is None or trailer == b"\r\n":
                    break
            self._finish()
            return False
        self._left = size
        return True

    async def read_all(self, limit: int) -> bytes:
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
        more than ``limit`` was left, or the body broke."""
        if self._send_continue is not None:  # the client waits for a go-ahead it will not get
            return False
        total = 0
        try:
            while data := await self.read():
                total += len(data)
                if total > limit:
                    return False
        except (HttpError, ConnectionError):
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


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise HttpError(400) from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise HttpError(400, "malformed HTTP request")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed MIME header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, target, version, headers


class HttpServer:
    """Serves ``handler`` on listeners and handed-over connections; owns every connection task."""

    def __init__(self, handler: Handler, name: str = "http") -> None:
        self._handler = handler
        self._name = name
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
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except HttpError as exc:  # malformed request framing: answer once and close
            await self._write_response(writer, text_response(exc.status, exc.text), False, False)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            log.exception("unexpected error serving an HTTP connection")
        finally:
            writer.close()

    async def _one_request(self, conn: _Conn, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Serve one request; True to keep the connection for another."""
        head = await conn.read_until(b"\r\n\r\n", MAX_HEADER_BYTES)
        if head is None:
            return False
        method, target, version, headers = _parse_head(head.lstrip(b"\r\n"))
        keep_alive = _keep_alive(version, headers)
        body = _body(conn, writer, version, headers)
        split = urlsplit(target)
        request = Request(method, target, split.path or "/", parse_qs(split.query, keep_blank_values=True),
                          version, headers, body, peer)
        try:
            response = await self._handler(request)
        except HttpError as exc:
            response = text_response(exc.status, exc.text)
        except Exception:  # noqa: BLE001
            log.exception("unexpected error in HTTP handler for %s %s", method, target)
            response = text_response(500, "Internal Server Error")
        head_only = method == "HEAD"
        if isinstance(response, StreamResponse):
            chunked = version == "HTTP/1.1"
            keep_alive = keep_alive and chunked
            finished = await self._stream(writer, response, request, conn, chunked, keep_alive, head_only)
            keep_alive = keep_alive and finished
        else:
            await self._write_response(writer, response, keep_alive, head_only)
        if keep_alive and not body.done:
            keep_alive = await body.discard(256 * 1024)
        return keep_alive

    @staticmethod
    def _status_line(status: int) -> str:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "status code " + str(status)
        return f"HTTP/1.1 {status} {phrase}\r\n"

    def _head_bytes(self, status: int, headers: Headers, keep_alive: bool) -> bytes:
        lines = [self._status_line(status)]  # Go answers HTTP/1.1 whatever the request's version
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        lines.append(f"Date: {formatdate(usegmt=True)}\r\n")
        if not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _write_response(self, writer: asyncio.StreamWriter, resp: Response, keep_alive: bool,
                              head_only: bool) -> None:
        headers = [*resp.headers, ("Content-Length", str(len(resp.body)))]
        writer.write(self._head_bytes(resp.status, headers, keep_alive))
        if not head_only and resp.body:
            writer.write(resp.body)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, resp: StreamResponse, request: Request, conn: _Conn,
                      chunked: bool, keep_alive: bool, head_only: bool) -> bool:
        """Send a streamed response; False if it was cut short (client gone, error)."""
        headers = list(resp.headers)
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        writer.write(self._head_bytes(resp.status, headers, keep_alive))
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


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _body(conn: _Conn, writer: asyncio.StreamWriter, version: str, headers: dict[str, str]) -> Body:
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = 0
    if not chunked and "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
    send_continue = None
    if headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1" and (chunked or length):
        def send_continue() -> None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return Body(conn, length, chunked, send_continue)
