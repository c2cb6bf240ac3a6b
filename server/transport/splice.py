"""Byte-for-byte relays between socket pairs, on a thread of their own, with splice(2).

The client-port mux hands each gRPC connection here: its bytes then move between the client and the
internal gRPC listener in the kernel (through a pipe per direction), and the event loop, which serves
the gRPC calls themselves, never sees them. Back-pressure: a direction whose pipe cannot be emptied
into its destination stops reading its source until the destination is writable again.

The loop runs in C (``_splice.c``, built by ``pip install`` where a compiler is at hand), which never
takes the GIL; else in Python below (``ETCDLITE_PY_SPLICE=1`` forces it). bench/variants.md: the
Python loop cost the default (muxed) client port about 30% more CPU per request than gRPC alone.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading

try:
    from . import _splice as _native
except ImportError:  # built without a C compiler: the Python loop
    _native = None

log = logging.getLogger("etcdlite.splice")

_CHUNK = 1 << 16
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class _Direction:
    """src -> pipe -> dst."""

    __slots__ = ("src", "dst", "pipe_r", "pipe_w", "pending", "eof")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.pipe_r, self.pipe_w = os.pipe()
        self.pending = 0  # bytes in the pipe, not yet in dst
        self.eof = False  # src said EOF; dst was shut for writing once the pipe drained

    def close(self) -> None:
        os.close(self.pipe_r)
        os.close(self.pipe_w)


class _Relay:
    __slots__ = ("a", "b", "up", "down", "closed")

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.a, self.b = a, b
        self.up = _Direction(a, b)
        self.down = _Direction(b, a)
        self.closed = False

    def directions(self) -> tuple[_Direction, _Direction]:
        return self.up, self.down


_MESSAGE = struct.Struct("=cii")  # the control pipe, as _splice.c reads it: b"n" + two fds, or b"q"


class Splicer:
    """Owns the relay thread: ``relay(a, b)`` hands it two connected sockets (closed when either side
    ends); ``close()`` cuts every relay and stops it. The thread runs the C loop, or the Python one."""

    def __init__(self) -> None:
        self._ctl_r, self._ctl_w = os.pipe()
        os.set_blocking(self._ctl_r, False)
        self._lock = threading.Lock()
        self._stopping = False
        if _native is not None and not os.environ.get("ETCDLITE_PY_SPLICE"):
            serve = _native.serve
        else:
            serve = _serve
        self._thread = threading.Thread(target=serve, args=(self._ctl_r,), name="client-mux-splice", daemon=True)
        self._thread.start()

    def relay(self, a: socket.socket, b: socket.socket) -> None:
        a.setblocking(False)
        b.setblocking(False)
        with self._lock:
            if self._stopping:
                a.close()
                b.close()
                return
            os.write(self._ctl_w, _MESSAGE.pack(b"n", a.detach(), b.detach()))

    def close(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            os.write(self._ctl_w, _MESSAGE.pack(b"q", -1, -1))
        self._thread.join()
        os.close(self._ctl_r)
        os.close(self._ctl_w)


def _serve(ctl_fd: int) -> None:
    """The Python loop: what ``_splice.serve`` does, where the extension was not built."""
    _PythonLoop(ctl_fd).serve()


class _PythonLoop:
    def __init__(self, ctl_fd: int) -> None:
        self._ctl_fd = ctl_fd
        self._epoll = select.epoll()
        self._epoll.register(ctl_fd, select.EPOLLIN)
        self._by_fd: dict[int, tuple[_Relay, socket.socket]] = {}
        self._masks: dict[int, int] = {}
        self._relays: set[_Relay] = set()

    def serve(self) -> None:
        try:
            while True:
                for fd, mask in self._epoll.poll():
                    if fd == self._ctl_fd:
                        if self._control():
                            return
                        continue
                    entry = self._by_fd.get(fd)
                    if entry is not None and not entry[0].closed:
                        self._on_ready(entry[0], entry[1], mask)
        finally:
            for relay in list(self._relays):
                self._close(relay)
            self._epoll.close()

    def _control(self) -> bool:
        """Take the relays handed over; whether to stop."""
        try:
            data = os.read(self._ctl_fd, _MESSAGE.size * 64)
        except BlockingIOError:
            return False
        if not data:
            return True  # the owner is gone
        for op, a, b in _MESSAGE.iter_unpack(data):  # writes of one message each are atomic
            if op == b"q":
                return True
            relay = _Relay(socket.socket(fileno=a), socket.socket(fileno=b))
            self._relays.add(relay)
            for sock in (relay.a, relay.b):
                self._by_fd[sock.fileno()] = (relay, sock)
                self._masks[sock.fileno()] = select.EPOLLIN
                self._epoll.register(sock.fileno(), select.EPOLLIN)
        return False

    def _on_ready(self, relay: _Relay, sock: socket.socket, mask: int) -> None:
        if mask & select.EPOLLERR or (mask & select.EPOLLHUP and not self._masks.get(sock.fileno())):
            self._close(relay)  # an error, or a hang-up on a socket nothing can be read from now
            return
        try:
            for d in relay.directions():
                if d.dst is sock and mask & select.EPOLLOUT:
                    self._flush(d)
                if d.src is sock and mask & (select.EPOLLIN | select.EPOLLHUP) and not d.pending and not d.eof:
                    self._pump(d)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT):
                log.warning("relay failed", extra={"fields": {"error": str(exc)}})
            self._close(relay)
            return
        if relay.up.eof and relay.down.eof and not relay.up.pending and not relay.down.pending:
            self._close(relay)
            return
        self._update(relay)

    def _pump(self, d: _Direction) -> None:
        try:
            n = os.splice(d.src.fileno(), d.pipe_w, _CHUNK, flags=_FLAGS)
        except BlockingIOError:
            return
        if n == 0:
            d.eof = True
            d.dst.shutdown(socket.SHUT_WR)
            return
        d.pending += n
        self._flush(d)

    def _flush(self, d: _Direction) -> None:
        while d.pending:
            try:
                n = os.splice(d.pipe_r, d.dst.fileno(), d.pending, flags=_FLAGS)
            except BlockingIOError:
                return
            d.pending -= n

    def _update(self, relay: _Relay) -> None:
        """Each socket: readable wanted while its outgoing pipe is empty, writable while its incoming one is not."""
        for sock in (relay.a, relay.b):
            out = relay.up if sock is relay.a else relay.down
            inc = relay.down if sock is relay.a else relay.up
            mask = 0
            if not out.pending and not out.eof:
                mask |= select.EPOLLIN
            if inc.pending:
                mask |= select.EPOLLOUT
            fd = sock.fileno()
            if self._masks[fd] != mask:
                self._masks[fd] = mask
                self._epoll.modify(fd, mask)

    def _close(self, relay: _Relay) -> None:
        if relay.closed:
            return
        relay.closed = True
        self._relays.discard(relay)
        for sock in (relay.a, relay.b):
            fd = sock.fileno()
            if self._by_fd.pop(fd, None) is not None:
                self._masks.pop(fd, None)
                self._epoll.unregister(fd)
            sock.close()
        relay.up.close()
        relay.down.close()
