"""The https:// client URLs: TLS terminated here, gRPC and HTTP behind it, as etcd serves one TLS port.

etcd answers gRPC and HTTP (/health, /metrics, the /v3 gateway, ...) on the same TLS port.  gRPC
core's TLS cannot check a CRL, limit TLS versions or cipher suites, or share the port with HTTP, so
the TLS is terminated on a thread of its own (Python's ssl, i.e. OpenSSL, configured by tls.py):

* a connection that negotiated ALPN "h2" (gRPC clients offer only h2), or that sent no ALPN and
  starts with the HTTP/2 preface, is relayed in plain text to gRPC's internal listener, from an
  abstract unix address of its own, under which ``tls.PEERS`` keeps the client certificate's CN;
* one that negotiated "http/1.1" (curl, Go's net/http and Kubernetes probes offer it beside h2, and
  the server's preference picks it), or sent anything else, is relayed to the HTTP server on the
  event loop through a socket pair.

The thread owns the listening sockets, the handshakes and every relay, so the event loop sees
gRPC's bytes only in gRPC core and HTTP's only in the HTTP server.  ``close()`` stops accepting,
``abort_connections()`` cuts what is open, ``wait_closed()`` joins the thread.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .httpd import HttpServer
from .tls import PEERS, ClientCertCheck, RejectedCertificate
from .tlsrelay import NativeRelays, available

log = logging.getLogger("etcdlite.tls")

_CHUNK = 1 << 16
HANDSHAKE_TIMEOUT = 30.0  # seconds a connection may take to finish its handshake and first bytes
_H2_PREFACE_START = b"PRI"
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EBADF)
_relay_names = itertools.count(1)


@dataclass(frozen=True)
class _Route:
    """Where a listener's connections go: gRPC's internal listener and/or an HTTP server; ``plain``
    takes those that start no TLS handshake, on a port that serves http and https alike."""

    grpc_path: str | None
    http: HttpServer | None
    plain: Callable[[socket.socket], None] | None = None


class _Conn:
    """One client connection: handshake, then a relay between ``tls`` and ``plain``."""

    def __init__(self, front: TlsFront, route: _Route, raw: socket.socket, address: str) -> None:
        self.front = front
        self.route = route
        self.address = address
        self.tls: ssl.SSLSocket = front.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self.plain: socket.socket | None = None
        self.peer_name = ""  # the relay's abstract address, while PEERS knows it
        self.deadline: float | None = time.monotonic() + HANDSHAKE_TIMEOUT
        self.handshaken = False
        self.common_name: str | None = None  # the verified client certificate's, if one was sent
        self.head = b""  # first bytes, read to tell a connection without ALPN
        self.to_plain = b""
        self.to_tls = b""
        self.tls_eof = False
        self.plain_eof = False
        self.read_wants_write = False  # OpenSSL must write (a TLS 1.3 key update) before it reads on
        self.closed = False
        self.masks: dict[int, int] = {}

    # -- set-up ------------------------------------------------------------------------------------
    def on_tls(self, mask: int) -> None:
        if self.closed:  # closed by an earlier event of the same select
            return
        if self.plain is None:
            self._set_up()
        else:
            self._relay(mask, from_tls=True)

    def _handshake(self) -> bool:
        """Go on with the handshake and, once it is done, etcd's checks; whether both are done and passed."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._want(self.tls, _READ)
            return False
        except ssl.SSLWantWriteError:
            self._want(self.tls, _WRITE)
            return False
        except (ssl.SSLError, OSError) as exc:
            self._reject(exc)
            return False
        self.handshaken = True
        der = self.tls.getpeercert(binary_form=True)
        try:
            self.front.check.check(der)
        except RejectedCertificate as exc:
            self._reject(exc)
            return False
        self.common_name = ClientCertCheck.common_name(der) if der else None
        return True

    def _set_up(self) -> None:
        """Handshake, checks, then where the connection goes (by ALPN, else by its first bytes)."""
        if not self.handshaken and not self._handshake():
            return
        protocol = self.tls.selected_alpn_protocol()
        if protocol is None and not self._sniff():
            return
        grpc = protocol == "h2" or (protocol is None and self.head.startswith(_H2_PREFACE_START))
        self.deadline = None
        try:
            if self.route.http is None or (grpc and self.route.grpc_path is not None):
                self.plain = self._to_grpc()
            else:
                self.plain = self._to_http()
        except OSError as exc:
            log.warning("cannot reach the internal gRPC listener", extra={"fields": {"error": str(exc)}})
            self.close()
            return
        self.plain.setblocking(False)
        self._send_plain(self.head)
        if not self.to_plain and self.front.hand_over(self):
            return
        self._relay(_READ, from_tls=True)

    def _sniff(self) -> bool:
        """Read until the first bytes tell HTTP/2 from anything else; whether they do."""
        while len(self.head) < len(_H2_PREFACE_START) and _H2_PREFACE_START.startswith(self.head):
            try:
                data = self.tls.recv(_CHUNK)
            except ssl.SSLWantReadError:
                self._want(self.tls, _READ)
                return False
            except (ssl.SSLError, OSError):
                self.close()
                return False
            if not data:
                self.close()
                return False
            self.head += data
        return True

    def _to_grpc(self) -> socket.socket:
        name = f"etcdlite-tls-{os.getpid()}-{next(_relay_names)}"
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind("\0" + name)
            upstream.connect(self.route.grpc_path)
        except OSError:
            upstream.close()
            raise
        if self.common_name is not None:
            PEERS.add(name, self.common_name)
            self.peer_name = name
        return upstream

    def _to_http(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        assert self.route.http is not None
        self.front.hand_to_http(self.route.http, theirs)
        return ours

    def _reject(self, exc: BaseException) -> None:
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
        # a client that hangs up mid-handshake (a port probe) is not worth a warning
        quiet = isinstance(exc, (ssl.SSLEOFError, ConnectionError)) or reason == "UNEXPECTED_EOF_WHILE_READING"
        (log.debug if quiet else log.warning)(
            "rejected connection on client endpoint", extra={"fields": {"remote-addr": self.address, "error": reason}})
        self.close()

    # -- the relay -------------------------------------------------------------------------------------
    def on_plain(self, mask: int) -> None:
        if not self.closed:
            self._relay(mask, from_tls=False)

    def _relay(self, mask: int, from_tls: bool) -> None:
        try:
            if mask & _WRITE:
                if from_tls:
                    self._flush_tls()
                else:
                    self._flush_plain()
            # both directions each time: a TLS record decrypted but not yet taken raises no event
            self._pump_tls()
            self._pump_plain()
        except (ssl.SSLError, OSError) as exc:
            if not isinstance(exc, ssl.SSLError) and exc.errno not in _GONE:
                log.warning("client connection relay failed", extra={"fields": {"error": str(exc)}})
            self.close()
            return
        if self.plain_eof and not self.to_tls or self.tls_eof and self.plain_eof:
            self.close()
            return
        self._update()

    def _pump_tls(self) -> None:
        self.read_wants_write = False
        while not self.to_plain and not self.tls_eof:
            try:
                data = self.tls.recv(_CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self.read_wants_write = True
                return
            except ssl.SSLZeroReturnError:
                data = b""
            if not data:
                self.tls_eof = True
                assert self.plain is not None
                self.plain.shutdown(socket.SHUT_WR)
                return
            self._send_plain(data)

    def _send_plain(self, data: bytes) -> None:
        if not data:
            return
        assert self.plain is not None
        try:
            n = self.plain.send(data)
        except BlockingIOError:
            n = 0
        self.to_plain = data[n:]

    def _flush_plain(self) -> None:
        if self.to_plain:
            self._send_plain(self.to_plain)

    def _pump_plain(self) -> None:
        assert self.plain is not None
        while not self.to_tls and not self.plain_eof:
            try:
                data = self.plain.recv(_CHUNK)
            except BlockingIOError:
                return
            if not data:
                self.plain_eof = True
                return
            self.to_tls = data
            self._flush_tls()

    def _flush_tls(self) -> None:
        """OpenSSL takes a write whole or asks for the same bytes again once the socket is writable."""
        if not self.to_tls:
            return
        try:
            n = self.tls.send(self.to_tls)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        self.to_tls = self.to_tls[n:]

    def _update(self) -> None:
        tls_mask = ((_READ if not self.to_plain and not self.tls_eof else 0)
                    | (_WRITE if self.to_tls or self.read_wants_write else 0))
        self._want(self.tls, tls_mask)
        if self.plain is not None:
            plain_mask = (_READ if not self.to_tls and not self.plain_eof else 0) | (_WRITE if self.to_plain else 0)
            self._want(self.plain, plain_mask)

    def _want(self, sock: socket.socket, mask: int) -> None:
        self.front.want(self, sock, mask)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.peer_name:
            PEERS.remove(self.peer_name)
        for sock in (self.tls, self.plain):
            if sock is None:
                continue
            self.front.forget(self, sock)
        if self.handshaken:
            try:
                self.tls.setblocking(False)
                self.tls.unwrap()  # close_notify, so a reader of a close-delimited body sees a clean end
            except (ssl.SSLError, OSError, ValueError):
                pass
        for sock in (self.tls, self.plain):
            if sock is not None:
                sock.close()


class TlsFront:
    """The TLS listeners of the client port and the thread that serves them."""

    def __init__(self, context: ssl.SSLContext, check: ClientCertCheck) -> None:
        self.context = context
        self.check = check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._listeners: list[socket.socket] = []
        self._pending: list[Callable[[], None]] = []  # work handed to the thread
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._peeking: set[socket.socket] = set()  # accepted on a shared port, not yet known to be TLS
        self._http_tasks: set[asyncio.Task[None]] = set()  # hand-overs to the HTTP server, until they are done
        self._stopping = False
        self._thread: threading.Thread | None = None
        # established connections go to the relay loop in C where it can run (tlsrelay.py)
        self._native = NativeRelays(self._native_done) if available() else None
        self._native_peers: dict[int, str] = {}  # relay id -> its PEERS name
        if self._native is not None:
            self._selector.register(self._native.done_r, _READ, lambda mask: self._native.read_done())

    async def listen(self, host: str, port: int, grpc_path: str | None, http: HttpServer | None,
                     plain: Callable[[socket.socket], None] | None = None) -> int:
        """Serve TLS on host:port; connections go to gRPC (``grpc_path``) and/or ``http``, and those
        that are not TLS to ``plain`` (called on the event loop) if given, else nowhere."""
        route = _Route(grpc_path, http, plain)
        self._loop = asyncio.get_running_loop()
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._listeners.append(sock)
        self._call(lambda: self._selector.register(sock, _READ, lambda mask: self._accept(sock, route)))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="client-tls", daemon=True)
            self._thread.start()
        return int(sock.getsockname()[1])

    # -- called on the thread ----------------------------------------------------------------------
    def want(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
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

    def hand_over(self, conn: _Conn) -> bool:
        """Give an established connection to the C relay loop; False: relay it here."""
        if self._native is None or conn.plain is None:
            return False
        for sock in (conn.tls, conn.plain):
            self.forget(conn, sock)
        relay_id = next(_relay_names)
        if not self._native.take(conn.tls, conn.plain, relay_id):
            self._conns.add(conn)
            return False
        if conn.peer_name:
            self._native_peers[relay_id] = conn.peer_name
        conn.closed = True  # the C loop owns its sockets now
        return True

    def _native_done(self, relay_id: int) -> None:
        name = self._native_peers.pop(relay_id, None)
        if name is not None:
            PEERS.remove(name)

    def forget(self, conn: _Conn, sock: socket.socket) -> None:
        if conn.masks.pop(sock.fileno(), 0):
            self._selector.unregister(sock)
        self._conns.discard(conn)

    def hand_to_http(self, http: HttpServer, sock: socket.socket) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._serve_http, http, sock)

    def _accept(self, listener: socket.socket, route: _Route) -> None:
        while True:
            try:
                raw, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("accept failed", extra={"fields": {"error": str(exc)}})
                    return
                continue
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
            if route.plain is None:
                self._start_tls(raw, route, where)
            else:  # first see whether it speaks TLS at all
                self._peeking.add(raw)
                self._selector.register(raw, _READ, lambda mask, r=raw: self._tls_or_plain(r, route, where))

    def _start_tls(self, raw: socket.socket, route: _Route, where: str) -> None:
        conn = _Conn(self, route, raw, where)
        self._conns.add(conn)
        conn.on_tls(_READ)

    def _tls_or_plain(self, raw: socket.socket, route: _Route, where: str) -> None:
        """A TLS connection starts with a handshake record (0x16); anything else is plain."""
        self._selector.unregister(raw)
        try:
            first = raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:  # a spurious wake-up
            self._selector.register(raw, _READ, lambda mask: self._tls_or_plain(raw, route, where))
            return
        except OSError:
            first = b""
        self._peeking.discard(raw)
        if first == b"\x16":
            self._start_tls(raw, route, where)
        elif first and route.plain is not None and self._loop is not None:
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
            if self._native is not None:
                self._native.close()
                for name in self._native_peers.values():
                    PEERS.remove(name)
            self._selector.close()

    def _close_owner(self, sock: object) -> None:
        for conn in list(self._conns):
            if sock is conn.tls or sock is conn.plain:
                conn.close()

    def _timeout(self) -> float | None:
        deadlines = [c.deadline for c in self._conns if c.deadline is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns if c.deadline is not None and c.deadline <= now]:
            conn.close()

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
