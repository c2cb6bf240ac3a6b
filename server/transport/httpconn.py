"""A connection's bytes as a request arrives: its head (bounded, timed) and its body, by
Content-Length or chunked, read as the handler asks for it (Go's net/http limits and words)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from .httpparse import MalformedRequest, chunk_size

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


class Conn:
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

    async def wait_peer_gone(self) -> None:
        """Returns once the peer closes; bytes it sends meanwhile are kept for the next request."""
        while await self._fill():
            pass


class Body:
    """A request body, read as it arrives: by Content-Length, or chunked."""

    def __init__(self, conn: Conn, length: int, chunked: bool, send_continue: Callable[[], None] | None,
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
