"""One client connection of the TLS front (``tlsfront.py``): handshake, etcd's checks, routing, relay.

After the handshake and the checks (``tls.ClientCertCheck``), a connection goes by ALPN, else by its
first bytes: "h2" (gRPC clients offer only h2), or no ALPN and the HTTP/2 preface, goes to gRPC
core's internal listener, connected from an abstract unix address of its own under which
``peers.PEERS`` keeps the client certificate; "http/1.1" (curl, Go's net/http and Kubernetes probes
offer it beside h2, and the server's preference picks it), or anything else, goes to the HTTP server
through a socket pair.  Then the bytes move between the TLS socket and that plain socket: here in
Python, or in C once the front hands the connection over (``tlsrelay.py``).

Everything here runs on the front's thread.  Descriptors: the TLS socket, and once routed, the
plain socket and its other end (gRPC core's accepted end, or the HTTP server's end of the pair):
``DESCRIPTORS_ROUTED`` in all, counted by the front against the client connections' budget.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .httpd import HttpServer
from .peers import PEERS
from .tls import RejectedCertificate

if TYPE_CHECKING:
    from .tlsfront import TlsFront

log = logging.getLogger("etcdlite.tls")

CHUNK = 1 << 16
HANDSHAKE_TIMEOUT = 30.0  # seconds a connection may take to finish its handshake and first bytes
DESCRIPTORS_ROUTED = 3  # the TLS socket, the plain socket, the plain socket's other end
H2_PREFACE_START = b"PRI"
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EBADF)
relay_ids = itertools.count(1)  # relay names and the C loop's relay ids


@dataclass(frozen=True)
class Route:
    """Where a listener's connections go: gRPC's internal listener (its abstract unix address, with
    the leading NUL) and/or an HTTP server; ``plain`` takes those that start no TLS handshake, on a
    port that serves http and https alike (called on the event loop)."""

    grpc_path: str | None
    http: HttpServer | None
    plain: Callable[[socket.socket], None] | None = None


class TlsConn:
    """One client connection: handshake, then a relay between ``tls`` and ``plain``."""

    def __init__(self, front: TlsFront, route: Route, raw: socket.socket, address: str) -> None:
        self.front = front
        self.route = route
        self.address = address
        self.tls: ssl.SSLSocket = front.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self.plain: socket.socket | None = None
        self.peer_name = ""  # the relay's abstract address, while PEERS knows it
        self.deadline: float | None = time.monotonic() + HANDSHAKE_TIMEOUT
        self.handshaken = False
        self.certificate: bytes | None = None  # the verified client certificate (DER), if one was sent
        self.head = b""  # first bytes, read to tell a connection without ALPN
        self.to_plain = b""
        self.to_tls = b""
        self.tls_eof = False
        self.plain_eof = False
        self.read_wants_write = False  # OpenSSL must write (a TLS 1.3 key update) before it reads on
        self.closed = False
        self.masks: dict[int, int] = {}

    @property
    def descriptors(self) -> int:
        return DESCRIPTORS_ROUTED if self.plain is not None else 1

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
            self._want(self.tls, READ)
            return False
        except ssl.SSLWantWriteError:
            self._want(self.tls, WRITE)
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
        self.certificate = der or None
        return True

    def _set_up(self) -> None:
        """Handshake, checks, then where the connection goes (by ALPN, else by its first bytes)."""
        if not self.handshaken and not self._handshake():
            return
        protocol = self.tls.selected_alpn_protocol()
        if protocol is None and not self._sniff():
            return
        grpc = protocol == "h2" or (protocol is None and self.head.startswith(H2_PREFACE_START))
        self.deadline = None
        try:
            if self.route.http is None or (grpc and self.route.grpc_path is not None):
                plain = self._to_grpc()
            else:
                plain = self._to_http()
        except OSError as exc:
            log.warning("cannot reach the internal gRPC listener", extra={"fields": {"error": str(exc)}})
            self.close()
            return
        self.plain = plain
        self.front.count(DESCRIPTORS_ROUTED - 1)
        plain.setblocking(False)
        self._send_plain(self.head)
        if not self.to_plain and self.front.hand_over(self):
            return
        self._relay(READ, from_tls=True)

    def _sniff(self) -> bool:
        """Read until the first bytes tell HTTP/2 from anything else; whether they do."""
        while len(self.head) < len(H2_PREFACE_START) and H2_PREFACE_START.startswith(self.head):
            try:
                data = self.tls.recv(CHUNK)
            except ssl.SSLWantReadError:
                self._want(self.tls, READ)
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
        name = f"etcdlite-tls-{os.getpid()}-{next(relay_ids)}"
        assert self.route.grpc_path is not None
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind("\0" + name)
            upstream.connect(self.route.grpc_path)
        except OSError:
            upstream.close()
            raise
        if self.certificate is not None:
            PEERS.add(name, self.front.check.common_name(self.certificate), self.certificate)
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
            if mask & WRITE:
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
                data = self.tls.recv(CHUNK)
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
                data = self.plain.recv(CHUNK)
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
        tls_mask = ((READ if not self.to_plain and not self.tls_eof else 0)
                    | (WRITE if self.to_tls or self.read_wants_write else 0))
        self._want(self.tls, tls_mask)
        if self.plain is not None:
            plain_mask = (READ if not self.to_tls and not self.plain_eof else 0) | (WRITE if self.to_plain else 0)
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
            if sock is not None:
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
        self.front.count(-self.descriptors)
