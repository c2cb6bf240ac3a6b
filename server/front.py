"""``--client-http-mux``: HTTP/1.1 and gRPC on one client port, as etcd's cmux does.

grpcio owns its listening sockets, so the client port is taken by this asyncio listener instead
and gRPC listens on an internal address (an abstract unix socket).  Each connection is told by
its first bytes: the HTTP/2 preface ("PRI * HTTP/2.0") is spliced, byte for byte, to the internal
gRPC listener by a thread of its own with splice(2) (``splice.py``), so the event loop never sees
gRPC's bytes; anything else is handed to the HTTP/1.1 server.  What it costs gRPC throughput is
measured in the README.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import cast

from .httpd import HttpServer
from .splice import Splicer

log = logging.getLogger("etcdlite.front")

H2_PREFACE_START = b"PRI"  # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; no HTTP/1 method starts so


def internal_grpc_address() -> tuple[str, str]:
    """(gRPC listen address, asyncio connect path) of a fresh abstract unix socket."""
    name = f"etcdlite-grpc-{os.getpid()}-{os.urandom(4).hex()}"
    return f"unix-abstract:{name}", "\0" + name


class _Front(asyncio.Protocol):
    """One client connection until its first bytes tell what it is: then handed to the splicer
    (gRPC) or to the HTTP server."""

    def __init__(self, mux: ClientPortMux) -> None:
        self.mux = mux
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if len(self._head) < len(H2_PREFACE_START) and H2_PREFACE_START.startswith(self._head):
            return  # too few bytes to tell yet
        if self._head.startswith(H2_PREFACE_START):
            self._to_grpc()
        else:
            self._to_http(self._head)

    def _to_grpc(self) -> None:
        self.transport.pause_reading()
        client = socket.socket(fileno=os.dup(self.transport.get_extra_info("socket").fileno()))
        self.transport.abort()  # closes asyncio's descriptor only: the connection lives on in ``client``
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.mux.target)
            upstream.sendall(self._head)
        except OSError as exc:
            log.warning("cannot reach the internal gRPC listener", extra={"fields": {"error": str(exc)}})
            upstream.close()
            client.close()
            return
        self.mux.splicer.relay(client, upstream)

    def _to_http(self, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(head)
        writer = asyncio.StreamWriter(self.transport, protocol, reader, loop)
        self.mux.http.serve(reader, writer)


class ClientPortMux:
    """The front listener(s) of the client port; ``close()`` / ``wait_closed()`` end them and
    every connection they spliced (HTTP connections belong to ``http``)."""

    def __init__(self, target: str, http: HttpServer) -> None:
        self.target = target  # the internal gRPC listener's unix socket path
        self.http = http
        self._servers: list[asyncio.Server] = []
        self._adopting: set[asyncio.Task[object]] = set()
        self.splicer = Splicer()

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Front(self), host, port, reuse_address=True)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere: a plain one on a port that also serves https (the
        TLS front accepts those and hands over the ones that do not start a TLS handshake)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: _Front(self), sock), name="client-mux-adopt")
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def abort_connections(self) -> None:
        """Cut every spliced connection (after gRPC's own graceful stop)."""
        self.splicer.close()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
