"""``--client-http-mux``: HTTP/1.1 and gRPC on one client port, as etcd's cmux does.

grpcio owns its listening sockets, so the client port is taken by this listener instead and gRPC
listens on an internal address (an abstract unix socket). Each connection is told by its first
bytes: the HTTP/2 preface ("PRI * HTTP/2.0") goes to the relay process (``splice.py``), which moves
its bytes to the internal gRPC listener, so the event loop never sees gRPC's bytes; anything else is
handed to the HTTP/1.1 server. What it costs gRPC throughput is measured in the README.

At its limit the client port refuses new connections and leaves those open undisturbed: like etcd
it keeps ``RESERVED_DESCRIPTORS`` of RLIMIT_NOFILE for the server's own files, and refuses a client
connection beyond that (etcd lets it wait in the backlog, where its client times out); should the
process run out of descriptors anyway, the connection is accepted on a descriptor kept spare for
this and closed at once. One warning says so every ``REFUSAL_LOG_SECONDS``, not one per connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Callable

from .httpd import HttpServer
from .splice import GrpcRelay

log = logging.getLogger("etcdlite.front")

H2_PREFACE_START = b"PRI"  # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; no HTTP/1 method starts so
ACCEPTS_PER_WAKEUP = 64  # a flood of connections must not starve the loop's other work
REFUSAL_LOG_SECONDS = 10.0
RESERVED_DESCRIPTORS = 150  # etcd's reservedInternalFDNum: the data dir, gRPC core, logs
RETRY_ACCEPT_SECONDS = 0.1  # the kernel's memory is short (ENOBUFS/ENOMEM): wait, do not spin
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_OUT_OF_MEMORY = (errno.ENOBUFS, errno.ENOMEM)


def internal_grpc_address() -> tuple[str, str]:
    """(gRPC listen address, name) of a fresh abstract unix socket."""
    name = f"etcdlite-grpc-{os.getpid()}-{os.urandom(4).hex()}"
    return f"unix-abstract:{name}", name


def connection_limit() -> int:
    """Client connections the port keeps open at most: RLIMIT_NOFILE less etcd's reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 2**62
    return max(soft - RESERVED_DESCRIPTORS, soft // 2)


class RefusalLog:
    """Connections refused, told in one warning per reason every ``REFUSAL_LOG_SECONDS`` at most
    (the first at once), never one per connection."""

    def __init__(self) -> None:
        self._unreported: dict[str, int] = {}
        self._last = -REFUSAL_LOG_SECONDS
        self._timer: asyncio.TimerHandle | None = None

    def note(self, err: int | str) -> None:
        """One refusal, for an errno or a reason in words."""
        reason = err if isinstance(err, str) else os.strerror(err).lower() if err else "unknown error"
        self._unreported[reason] = self._unreported.get(reason, 0) + 1
        if self._timer is None:
            wait = max(0.0, self._last + REFUSAL_LOG_SECONDS - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(wait, self._tell)

    def _tell(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        for reason, count in self._unreported.items():
            log.warning("refused client connections", extra={"fields": {"error": reason, "count": count}})
        self._unreported.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def listening_sockets(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address of host:port (port 0 picks one), as etcd listens:
    SO_REUSEADDR, IPv6 sockets IPv6 only.  If one cannot be made, those made are closed and it raises."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class ConnectionBudget:
    """The descriptors client connections hold in this process, summed over the listeners that take
    them (the mux here, the TLS front of the https URLs), against ``connection_limit()``; and the log
    of the connections refused for want of them.  Each holder reports its own count."""

    def __init__(self) -> None:
        self.limit = connection_limit()
        self.refusals = RefusalLog()
        self._holders: list[Callable[[], int]] = []

    def add_holder(self, descriptors: Callable[[], int]) -> None:
        self._holders.append(descriptors)

    @property
    def used(self) -> int:
        return sum(holder() for holder in self._holders)

    def full(self) -> bool:
        return self.used >= self.limit

    def full_reason(self) -> str:
        return (f"{self.limit} client connections open, the limit (RLIMIT_NOFILE less {RESERVED_DESCRIPTORS} "
                f"kept for the server)")


class ClientPortMux:
    """The listener(s) of the client port: ``start()``, ``listen()``, ``close()`` / ``wait_closed()``
    end them, ``abort_connections()`` every connection gone to gRPC (HTTP connections belong to
    ``http``).  ``adopt()`` takes a connection accepted elsewhere (by the TLS front)."""

    def __init__(self, grpc_name: str, http: HttpServer, budget: ConnectionBudget | None = None) -> None:
        self.http = http
        self.budget = budget or ConnectionBudget()
        self.refusals = self.budget.refusals
        self.relay = GrpcRelay(grpc_name, self.refusals.note)
        self.budget.add_holder(lambda: self.connections)
        self._closing = False
        self._listeners: list[socket.socket] = []
        self._undecided: dict[int, tuple[socket.socket, bytes]] = {}  # by fd: first bytes not yet telling
        # a client that never tells what it is would hold its descriptor forever (etcd's cmux does)
        self._idle: dict[int, asyncio.TimerHandle] = {}
        self._here = 0  # connections with a descriptor here: undecided and HTTP ones
        self._tasks: set[asyncio.Task[None]] = set()
        self._spare: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        await self.relay.start()

    async def listen(self, host: str, port: int) -> int:
        """Listen on every address of host:port (port 0 picks one); returns the first one's port."""
        assert self._loop is not None
        socks = await listening_sockets(self._loop, host, port)
        for sock in socks:
            self._listeners.append(sock)
            self._loop.add_reader(sock.fileno(), self._accept, sock)
        return int(socks[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Client connections open: each holds a descriptor in this process (gRPC core's end of
        the relay's connection, for those relayed)."""
        return self._here + self.relay.connections

    def _release(self) -> None:
        self._here -= 1

    # -- accepting --------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._refuse_one(listener, exc.errno)
                    continue
                if exc.errno in _OUT_OF_MEMORY:
                    self.refusals.note(exc.errno)
                    self._pause(listener)
                    return
                continue  # ECONNABORTED and the like: that client is gone already
            if self.budget.full():
                conn.close()
                self.refusals.note(self.budget.full_reason())
                continue
            self._take(conn)

    def adopt(self, conn: socket.socket) -> None:
        """Serve a connection accepted elsewhere, like one accepted here: a plain one on a port that
        also serves https (the TLS front accepts those, counted in the budget, and hands over the
        ones that start no TLS handshake)."""
        if self._closing:
            conn.close()
            return
        self._take(conn)

    def _refuse_one(self, listener: socket.socket, err: int) -> None:
        """Accept a connection on the spare descriptor and close it: the client hears at once."""
        self.refusals.note(err)
        if self._spare is None:
            self._pause(listener)
            return
        os.close(self._spare)
        self._spare = None
        try:
            listener.accept()[0].close()
        except OSError:
            pass
        try:
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass  # another thread took it: back off until one is free

    def _pause(self, listener: socket.socket) -> None:
        assert self._loop is not None
        self._loop.remove_reader(listener.fileno())
        self._loop.call_later(RETRY_ACCEPT_SECONDS, self._resume, listener)

    def _resume(self, listener: socket.socket) -> None:
        assert self._loop is not None
        if listener.fileno() < 0:
            return  # closed meanwhile
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._loop.call_later(RETRY_ACCEPT_SECONDS, self._resume, listener)
                return
        self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _take(self, conn: socket.socket) -> None:
        assert self._loop is not None
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._here += 1
        self._undecided[conn.fileno()] = (conn, b"")
        self._idle[conn.fileno()] = self._loop.call_later(self.http.timeouts.idle, self._silent, conn)
        self._loop.add_reader(conn.fileno(), self._first_bytes, conn)

    def _silent(self, conn: socket.socket) -> None:
        """A connection that said nothing for the idle timeout: closed."""
        assert self._loop is not None
        fd = conn.fileno()
        self._idle.pop(fd, None)
        if self._undecided.pop(fd, None) is not None:
            self._loop.remove_reader(fd)
            conn.close()
            self._release()

    # -- telling gRPC from HTTP/1.1 ---------------------------------------------------------
    def _first_bytes(self, conn: socket.socket) -> None:
        assert self._loop is not None
        fd = conn.fileno()
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        head = self._undecided[fd][1] + data
        if data and len(head) < len(H2_PREFACE_START) and H2_PREFACE_START.startswith(head):
            self._undecided[fd] = (conn, head)  # too few bytes to tell yet
            return
        self._loop.remove_reader(fd)
        del self._undecided[fd]
        timer = self._idle.pop(fd, None)
        if timer is not None:
            timer.cancel()
        if not data:
            conn.close()  # gone before it said anything
            self._release()
        elif head.startswith(H2_PREFACE_START):
            self._release()  # counted by the relay from now on
            self.relay.hand_over(conn, head)
        else:
            task = self._loop.create_task(self._to_http(conn, head), name="client-mux-http")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _to_http(self, conn: socket.socket, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20, loop=loop)
        try:
            await loop.connect_accepted_socket(lambda: _Http1(reader, head, self.http, self._release), conn)
        except OSError:
            conn.close()
            self._release()

    # -- stopping ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening; connections not yet told apart are closed."""
        self._closing = True
        for sock in self._listeners:
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for fd, (conn, _) in list(self._undecided.items()):
            if self._loop is not None:
                self._loop.remove_reader(fd)
            conn.close()
            self._release()
        self._undecided.clear()
        for timer in self._idle.values():
            timer.cancel()
        self._idle.clear()
        for task in self._tasks:
            task.cancel()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.refusals.close()

    def abort_connections(self) -> None:
        """Cut every connection gone to gRPC (after gRPC's own graceful stop)."""
        self.relay.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _Http1(asyncio.StreamReaderProtocol):
    """An HTTP/1.1 connection whose first bytes the mux read: they come first, then the socket's."""

    def __init__(self, reader: asyncio.StreamReader, head: bytes, http: HttpServer,
                 on_lost: Callable[[], None]) -> None:
        super().__init__(reader)
        self._reader = reader
        self._head = head
        self._http = http
        self._on_lost = on_lost

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_lost()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.data_received(self._head)  # before the transport's first read: it starts after this
        writer = asyncio.StreamWriter(transport, self, self._reader, asyncio.get_running_loop())  # type: ignore[arg-type]
        self._http.serve(self._reader, writer)
