"""``--client-http-mux``: HTTP/1.1 and gRPC on one client port, as etcd's cmux does.

grpcio owns its listening sockets, so the client port is taken by this asyncio listener instead
and gRPC listens on an internal address (an abstract unix socket).  Each connection is told by
its first bytes: the HTTP/2 preface ("PRI * HTTP/2.0") is spliced, byte for byte, to the internal
gRPC listener; anything else is handed to the HTTP/1.1 server.  The splice is two asyncio
protocols writing into each other's transports, with back-pressure both ways.  What it costs
gRPC throughput is measured in the README.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, cast

from .httpd import HttpServer

log = logging.getLogger("etcdlite.front")

H2_PREFACE_START = b"PRI"  # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; no HTTP/1 method starts so


def internal_grpc_address() -> tuple[str, str]:
    """(gRPC listen address, asyncio connect path) of a fresh abstract unix socket."""
    name = f"etcdlite-grpc-{os.getpid()}-{os.urandom(4).hex()}"
    return f"unix-abstract:{name}", "\0" + name


class _Upstream(asyncio.Protocol):
    """The internal gRPC side of one spliced connection."""

    def __init__(self, front: _Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.front.transport.write(data)

    def eof_received(self) -> bool:
        if self.front.transport.can_write_eof():
            self.front.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.front.transport.close()

    def pause_writing(self) -> None:
        self.front.transport.pause_reading()

    def resume_writing(self) -> None:
        self.front.transport.resume_reading()


class _Front(asyncio.Protocol):
    """One client connection: sniffed, then spliced to gRPC or handed to the HTTP server."""

    def __init__(self, mux: ClientPortMux) -> None:
        self.mux = mux
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: _Upstream | None = None
        self._head = b""
        self._decided = False
        self._pending: list[bytes] = []  # client bytes that arrived while connecting upstream
        self._eof_pending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.mux._fronts.add(self)

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
            return
        if self._decided:
            self._pending.append(data)
            return
        self._head += data
        if len(self._head) < len(H2_PREFACE_START) and H2_PREFACE_START.startswith(self._head):
            return  # too few bytes to tell yet
        self._decided = True
        if self._head.startswith(H2_PREFACE_START):
            self._pending.append(self._head)
            self.transport.pause_reading()
            self.mux._spawn(self._connect_upstream())
        else:
            self._to_http(self._head)

    def _to_http(self, head: bytes) -> None:
        self.mux._fronts.discard(self)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(head)
        writer = asyncio.StreamWriter(self.transport, protocol, reader, loop)
        self.mux.http.serve(reader, writer)

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # connected first: uvloop's create_unix_connection does not take abstract socket paths
            await loop.sock_connect(sock, self.mux.target)
            _, upstream = await loop.create_unix_connection(lambda: _Upstream(self), sock=sock)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            log.warning("cannot reach the internal gRPC listener", extra={"fields": {"error": str(exc)}})
            self.transport.abort()
            return
        self.upstream = upstream
        assert upstream.transport is not None
        for data in self._pending:
            upstream.transport.write(data)
        self._pending.clear()
        if self._eof_pending:
            upstream.transport.write_eof()
        if not self.transport.is_closing():
            self.transport.resume_reading()
        else:
            upstream.transport.close()

    def eof_received(self) -> bool:
        if self.upstream is not None and self.upstream.transport is not None:
            if self.upstream.transport.can_write_eof():
                self.upstream.transport.write_eof()
                return True
            return False
        if self._decided:
            self._eof_pending = True
            return True
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.mux._fronts.discard(self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


class ClientPortMux:
    """The front listener(s) of the client port; ``close()`` / ``wait_closed()`` end them and
    every connection they spliced (HTTP connections belong to ``http``)."""

    def __init__(self, target: str, http: HttpServer) -> None:
        self.target = target  # the internal gRPC listener's unix socket path
        self.http = http
        self._servers: list[asyncio.Server] = []
        self._fronts: set[_Front] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Front(self), host, port, reuse_address=True)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="client-mux-connect")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()

    def abort_connections(self) -> None:
        """Cut every spliced connection (after gRPC's own graceful stop)."""
        for front in list(self._fronts):
            front.transport.abort()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
