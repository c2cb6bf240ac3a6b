"""The https:// client URLs: TLS terminated here, gRPC and HTTP behind it, as etcd serves one TLS port.

etcd answers gRPC and HTTP (/health, /metrics, the /v3 gateway, ...) on the same TLS port.  gRPC
core's TLS cannot check a CRL, limit TLS versions or cipher suites, or share the port with HTTP, so
the TLS is terminated on a thread of its own (Python's ssl, i.e. OpenSSL, configured by tls.py).
Each connection (``tlsconn.py``) goes, once its handshake and etcd's checks are done, to gRPC
core's internal listener (directly: gRPC core then tells its client certificate by the address it
connects from, ``peers.py``) or to the HTTP server on the event loop.  On a port that serves http
and https alike (etcd's cmux), a connection that starts no TLS handshake is handed to the
client-port mux (``front.py``), which serves it like one it accepted itself.

The thread owns the listening sockets, the handshakes and every relay (or hands relays to the C
loop, ``tlsrelay.py``), so the event loop sees gRPC's bytes only in gRPC core and HTTP's only in the
HTTP server.  The descriptors its connections hold count against the client connections' budget
(``front.ConnectionBudget``, shared with the mux): past it a new connection is refused at once.
``close()`` stops accepting, ``abort_connections()`` cuts what is open, ``wait_closed()`` joins the
thread.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from .front import ACCEPTS_PER_WAKEUP, RETRY_ACCEPT_SECONDS, ConnectionBudget, listening_sockets
from .httpd import HttpServer
from .peers import PEERS
from .tls import ClientCertCheck
from .tlsconn import DESCRIPTORS_ROUTED, HANDSHAKE_TIMEOUT, READ, Route, TlsConn, relay_ids
from .tlsrelay import NativeRelays, available

log = logging.getLogger("etcdlite.tls")

_NO_ROOM = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class TlsFront:
    """The TLS listeners of the client URLs and the thread that serves them."""

    def __init__(self, context: ssl.SSLContext, check: ClientCertCheck, budget: ConnectionBudget) -> None:
        self.context = context
        self.check = check
        self.budget = budget
        self.descriptors = 0  # held by this front's connections (written by its thread only)
        budget.add_holder(lambda: self.descriptors)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, READ, None)
        self._listeners: list[socket.socket] = []
        self._paused: dict[socket.socket, tuple[Route, float]] = {}  # listener -> (route, resume at)
        self._pending: list[Callable[[], None]] = []  # work handed to the thread
        self._lock = threading.Lock()
        self._conns: set[TlsConn] = set()
        self._peeking: dict[socket.socket, float] = {}  # shared port, not yet known to be TLS -> deadline
        self._http_tasks: set[asyncio.Task[None]] = set()  # hand-overs to the HTTP server, until they are done
        self._stopping = False
        self._thread: threading.Thread | None = None
        # established connections go to the relay loop in C where it can run (tlsrelay.py)
        self._native = NativeRelays(self._native_done) if available() else None
        self._native_relays: dict[int, str] = {}  # relay id -> its PEERS name ("" without a certificate)
        if self._native is not None:
            native = self._native
            self._selector.register(native.done_r, READ, lambda mask: native.read_done())

    async def listen(self, host: str, port: int, grpc_path: str | None, http: HttpServer | None,
                     plain: Callable[[socket.socket], None] | None = None) -> int:
        """Serve TLS on host:port; connections go to gRPC (``grpc_path``: its abstract unix address,
        with the leading NUL) and/or ``http``, and those that are not TLS to ``plain`` (called on the
        event loop) if given, else nowhere."""
        route = Route(grpc_path, http, plain)
        self._loop = asyncio.get_running_loop()
        socks = await listening_sockets(self._loop, host, port)  # every address, as the mux
        for sock in socks:
            self._listeners.append(sock)
            self._call(functools.partial(self._watch_listener, sock, route))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="client-tls", daemon=True)
            self._thread.start()
        return int(socks[0].getsockname()[1])

    # -- called on the thread ----------------------------------------------------------------------
    def count(self, delta: int) -> None:
        """Descriptors this front's connections took (or gave back)."""
        self.descriptors += delta

    def want(self, conn: TlsConn, sock: socket.socket, mask: int) -> None:
        """Watch ``sock`` for ``mask`` (0: not at all) on behalf of ``conn``."""
        fd = sock.fileno()
        old = conn.masks.get(fd, 0)
        if old == mask:
            return
        conn.masks[fd] = mask
        handler = conn.on_tls if sock is conn.tls else conn.on_plain
        if not old:
            self._selector.register(sock, mask, handler)
        elif mask:
            self._selector.modify(sock, mask, handler)
        else:
            self._selector.unregister(sock)

    def hand_over(self, conn: TlsConn) -> bool:
        """Give an established connection to the C relay loop; False: relay it here."""
        if self._native is None or conn.plain is None:
            return False
        for sock in (conn.tls, conn.plain):
            self.forget(conn, sock)
        relay_id = next(relay_ids)
        if not self._native.take(conn.tls, conn.plain, relay_id):
            self._conns.add(conn)
            return False
        self._native_relays[relay_id] = conn.peer_name
        conn.closed = True  # the C loop owns its sockets (and their descriptors) now
        return True

    def _native_done(self, relay_id: int) -> None:
        name = self._native_relays.pop(relay_id, None)
        if name is None:
            return
        if name:
            PEERS.remove(name)
        self.count(-DESCRIPTORS_ROUTED)

    def forget(self, conn: TlsConn, sock: socket.socket) -> None:
        if conn.masks.pop(sock.fileno(), 0):
            self._selector.unregister(sock)
        self._conns.discard(conn)

    def hand_to_http(self, http: HttpServer, sock: socket.socket) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._serve_http, http, sock)

    def _watch_listener(self, listener: socket.socket, route: Route) -> None:
        self._selector.register(listener, READ, lambda mask: self._accept(listener, route))

    def _accept(self, listener: socket.socket, route: Route) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                raw, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _NO_ROOM:  # the client waits in the backlog until descriptors are free
                    self._refused(os.strerror(exc.errno).lower())
                    self._pause(listener, route)
                    return
                continue  # ECONNABORTED and the like: that client is gone already
            if self.budget.full():
                raw.close()
                self._refused(self.budget.full_reason())
                continue
            self.count(1)
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
            if route.plain is None:
                self._start_tls(raw, route, where)
            else:  # first see whether it speaks TLS at all
                self._peeking[raw] = time.monotonic() + HANDSHAKE_TIMEOUT
                self._selector.register(raw, READ, lambda mask, r=raw, w=where: self._tls_or_plain(r, route, w))

    def _refused(self, reason: str) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.budget.refusals.note, reason)

    def _pause(self, listener: socket.socket, route: Route) -> None:
        self._selector.unregister(listener)
        self._paused[listener] = (route, time.monotonic() + RETRY_ACCEPT_SECONDS)

    def _start_tls(self, raw: socket.socket, route: Route, where: str) -> None:
        conn = TlsConn(self, route, raw, where)
        self._conns.add(conn)
        conn.on_tls(READ)

    def _tls_or_plain(self, raw: socket.socket, route: Route, where: str) -> None:
        """A TLS connection starts with a handshake record (0x16); anything else is plain."""
        try:
            first = raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:  # a spurious wake-up
            return
        except OSError:
            first = b""
        self._selector.unregister(raw)
        del self._peeking[raw]
        if first == b"\x16":
            self._start_tls(raw, route, where)
            return
        self.count(-1)  # the mux counts it from now on
        if first and route.plain is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(route.plain, raw)
        else:
            raw.close()

    def _run(self) -> None:
        try:
            while True:
                for key, mask in self._selector.select(self._timeout()):
                    if key.data is None:
                        if self._drain_wakeups():
                            return
                        continue
                    try:
                        key.data(mask)
                    except Exception:  # one connection's bug must not stop every other one
                        log.exception("TLS front: a connection failed unexpectedly")
                        self._close_owner(key.fileobj)
                self._expire()
        finally:
            for conn in list(self._conns):
                conn.close()
            for raw in self._peeking:
                raw.close()
                self.count(-1)
            self._peeking.clear()
            if self._native is not None:
                self._native.close()
                for name in self._native_relays.values():
                    if name:
                        PEERS.remove(name)
                self.count(-DESCRIPTORS_ROUTED * len(self._native_relays))
                self._native_relays.clear()
            self._selector.close()

    def _close_owner(self, sock: object) -> None:
        for conn in list(self._conns):
            if sock is conn.tls or sock is conn.plain:
                conn.close()

    def _timeout(self) -> float | None:
        deadlines = [c.deadline for c in self._conns if c.deadline is not None]
        deadlines += self._peeking.values()
        deadlines += (resume for _, resume in self._paused.values())
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _expire(self) -> None:
        """Connections that said too little for too long are closed; paused listeners accept again."""
        now = time.monotonic()
        for conn in [c for c in self._conns if c.deadline is not None and c.deadline <= now]:
            conn.close()
        for raw in [r for r, deadline in self._peeking.items() if deadline <= now]:
            self._selector.unregister(raw)
            del self._peeking[raw]
            raw.close()
            self.count(-1)
        for listener, (route, resume) in list(self._paused.items()):
            if resume <= now:
                del self._paused[listener]
                self._watch_listener(listener, route)

    def _drain_wakeups(self) -> bool:
        """Run what other threads handed over; whether to stop."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            work, self._pending = self._pending, []
        for job in work:
            job()
        return self._stopping

    # -- called on the event loop --------------------------------------------------------------------
    def _call(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending.append(job)
        self._wake_w.send(b"\0")

    def _serve_http(self, http: HttpServer, sock: socket.socket) -> None:
        async def serve() -> None:
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
            except OSError:
                sock.close()
                return
            http.serve(reader, writer)

        task = asyncio.get_running_loop().create_task(serve(), name="client-tls-http")
        self._http_tasks.add(task)
        task.add_done_callback(self._http_tasks.discard)

    def close(self) -> None:
        """Stop accepting."""
        def stop_listening() -> None:
            for sock in self._listeners:
                if sock in self._paused:
                    del self._paused[sock]
                else:
                    self._selector.unregister(sock)
                sock.close()
        if self._thread is None:
            for sock in self._listeners:
                sock.close()
            return
        self._call(stop_listening)

    def abort_connections(self) -> None:
        """Cut every connection and stop the thread."""
        self._stopping = True
        self._call(lambda: None)

    async def wait_closed(self) -> None:
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._wake_r.close()
        self._wake_w.close()
