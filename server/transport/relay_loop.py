"""The client-port relay loop in Python: what ``_splice.serve`` does, where the extension was not built.

It runs in the relay process (``splice.py`` starts it, loading this file on its own: standard library
only, no package imports). ``serve(ctl_fd, name)`` relays until ``ctl_fd`` (a SOCK_SEQPACKET socket)
says EOF; each message on it carries one client socket and the bytes the server already read from
it, to be sent first to the abstract unix socket ``name`` (gRPC core). Bytes then move both ways
through recv/send; a direction whose destination is full keeps what is left over and stops reading
its source until it drained. A connection that cannot be taken is closed and ``refused <errno>`` goes
back on ``ctl_fd``; ``state <received> <open>`` tells the server how many connections it handed
over reached the relay and how many are open (absolute numbers: a report the server's full socket
could not take is sent later, when it is writable). On the way to the client, gRPC core's refusal
of a too-large message is given grpc-go's words (``Frames``).
"""

from __future__ import annotations

import errno
import select
import socket

CHUNK = 1 << 16
HEAD_MAX = 1 << 16  # the bytes the server read before handing a connection over
FRAME_HEADER = 9
HELD_MAX = 512  # trailers this small are looked at whole; core's refusal is ~150 bytes
_H2_HEADERS = 0x1
_H2_END_STREAM_AND_HEADERS = 0x5

# core's refusal, as chttp2's close_from_api writes it: a literal grpc-message field, never
# Huffman-coded; grpc-go (and so etcd) words it _OURS
_KEY = b"\x00\x0cgrpc-message"
_CORES = b"SERVER: Received message larger than max ("
_OURS = b"grpc: received message larger than max ("


def reword(frame: bytes) -> bytes:
    """A whole HEADERS frame, with core's words for a too-large message replaced by grpc-go's."""
    payload = frame[FRAME_HEADER:]
    at = payload.find(_KEY)
    if at < 0:
        return frame
    text = at + len(_KEY) + 1
    text_len = payload[at + len(_KEY)]
    if text_len >= 128 or text + text_len > len(payload) or not payload.startswith(_CORES, text):
        return frame
    cut = len(_CORES) - len(_OURS)
    new = (payload[:at + len(_KEY)] + bytes([text_len - cut]) + _OURS + payload[text + len(_CORES):])
    return len(new).to_bytes(3, "big") + frame[3:FRAME_HEADER] + new


class Frames:
    """Where core's HTTP/2 frames begin (core -> client), holding back small trailer frames whole."""

    __slots__ = ("held", "need", "pass_left")

    def __init__(self) -> None:
        self.held = b""  # a frame header being read, or a frame held whole
        self.need = 0  # bytes the held frame still lacks
        self.pass_left = 0  # payload bytes of the current frame to pass on unlooked-at

    def filter(self, data: bytes) -> bytes:
        if self.pass_left >= len(data) and not self.held:
            self.pass_left -= len(data)
            return data
        out = []
        i, n = 0, len(data)
        while i < n:
            if self.pass_left:
                k = min(self.pass_left, n - i)
                out.append(data[i:i + k])
                i += k
                self.pass_left -= k
            elif self.need:
                k = min(self.need, n - i)
                self.held += data[i:i + k]
                i += k
                self.need -= k
                if not self.need:
                    out.append(reword(self.held))
                    self.held = b""
            else:
                k = min(FRAME_HEADER - len(self.held), n - i)
                self.held += data[i:i + k]
                i += k
                if len(self.held) < FRAME_HEADER:
                    break
                length = int.from_bytes(self.held[:3], "big")
                if self.held[3] == _H2_HEADERS and self.held[4] == _H2_END_STREAM_AND_HEADERS and 0 < length <= HELD_MAX:
                    self.need = length
                else:
                    out.append(self.held)
                    self.held = b""
                    self.pass_left = length
        return b"".join(out)


class _Direction:
    __slots__ = ("pending", "eof")

    def __init__(self) -> None:
        self.pending = b""  # read from the source, not yet written to the destination
        self.eof = False  # the source said EOF; the destination is shut for writing


class _Relay:
    """socks[0] the client, socks[1] gRPC core; d[i] moves bytes out of socks[i] into socks[1 - i]."""

    __slots__ = ("socks", "d", "masks", "frames", "closed")

    def __init__(self, client: socket.socket, core: socket.socket) -> None:
        self.socks = (client, core)
        self.d = (_Direction(), _Direction())
        self.masks = [select.EPOLLIN, select.EPOLLIN]
        self.frames = Frames()
        self.closed = False


def serve(ctl_fd: int, name: str) -> None:
    _Loop(ctl_fd, "\0" + name).serve()


class _Loop:
    def __init__(self, ctl_fd: int, target: str) -> None:
        self._ctl = socket.socket(fileno=ctl_fd)
        self._ctl.setblocking(False)
        self._target = target
        self._epoll = select.epoll()
        self._epoll.register(ctl_fd, select.EPOLLIN)
        self._by_fd: dict[int, tuple[_Relay, int]] = {}
        self._ctl_mask = select.EPOLLIN
        self._received = 0  # connections handed over so far
        self._open = 0
        self._state_sent = True  # the server has heard of _received and _open as they are

    def serve(self) -> None:
        try:
            while True:
                for fd, events in self._epoll.poll():
                    if fd == self._ctl.fileno():
                        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and self._control():
                            return
                        continue
                    entry = self._by_fd.get(fd)
                    if entry is not None and not entry[0].closed:
                        self._on_ready(entry[0], entry[1], events)
                self._report_state()
        finally:
            for relay, index in list(self._by_fd.values()):
                if index == 0:
                    self._close(relay)
            self._epoll.close()

    def _refused(self, err: int) -> None:
        """For the server's log (lost when the server is not reading: no matter)."""
        try:
            self._ctl.send(b"refused %d" % err)
        except OSError:
            pass

    def _report_state(self) -> None:
        if self._state_sent:
            return
        try:
            self._ctl.send(b"state %d %d" % (self._received, self._open))
        except BlockingIOError:
            self._watch_ctl(select.EPOLLIN | select.EPOLLOUT)
            return
        except OSError:
            return
        self._state_sent = True
        self._watch_ctl(select.EPOLLIN)

    def _watch_ctl(self, mask: int) -> None:
        if mask != self._ctl_mask:
            self._ctl_mask = mask
            self._epoll.modify(self._ctl.fileno(), mask)

    def _control(self) -> bool:
        """Take the connections handed over; whether to stop (the server is gone)."""
        while True:
            try:
                head, fds, flags, _ = socket.recv_fds(self._ctl, HEAD_MAX, 1, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            if not head and not fds:
                return True
            self._received += 1
            self._state_sent = False
            if not fds or flags & socket.MSG_TRUNC:
                # no descriptor left here (the kernel closed the connection in transit), or a
                # head longer than the server ever sends
                self._refused(errno.EMFILE if flags & socket.MSG_CTRUNC else errno.EMSGSIZE)
                for fd in fds:
                    socket.socket(fileno=fd).close()
                continue
            self._add(socket.socket(fileno=fds[0]), head)

    def _add(self, client: socket.socket, head: bytes) -> None:
        try:
            core = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            self._refused(exc.errno or 0)
            client.close()
            return
        try:
            core.setblocking(False)
            core.connect(self._target)
        except OSError as exc:
            self._refused(exc.errno or 0)
            core.close()
            client.close()
            return
        client.setblocking(False)
        relay = _Relay(client, core)
        self._open += 1
        for index, sock in enumerate(relay.socks):
            self._by_fd[sock.fileno()] = (relay, index)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        try:
            self._send(relay, 0, head)
        except OSError:
            self._close(relay)
            return
        self._update(relay)

    def _on_ready(self, relay: _Relay, index: int, events: int) -> None:
        if events & select.EPOLLERR or (events & select.EPOLLHUP and not relay.masks[index]):
            self._close(relay)  # an error, or a hang-up on a socket nothing can be read from now
            return
        try:
            if events & select.EPOLLOUT:
                self._flush(relay, 1 - index)
            d = relay.d[index]
            if events & (select.EPOLLIN | select.EPOLLHUP) and not d.pending and not d.eof:
                self._pump(relay, index)
        except OSError:  # reset, broken pipe ...: the connection just ends
            self._close(relay)
            return
        if all(d.eof and not d.pending for d in relay.d):
            self._close(relay)
            return
        self._update(relay)

    def _pump(self, relay: _Relay, index: int) -> None:
        try:
            data = relay.socks[index].recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            relay.d[index].eof = True
            relay.socks[1 - index].shutdown(socket.SHUT_WR)
            return
        if index == 1:
            data = relay.frames.filter(data)
        self._send(relay, index, data)

    def _send(self, relay: _Relay, index: int, data: bytes) -> None:
        """Write data on from socks[index]; keep what does not fit."""
        if not data:
            return
        try:
            sent = relay.socks[1 - index].send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        relay.d[index].pending = data[sent:]

    def _flush(self, relay: _Relay, index: int) -> None:
        d = relay.d[index]
        if d.pending:
            try:
                sent = relay.socks[1 - index].send(d.pending)
            except (BlockingIOError, InterruptedError):
                return
            d.pending = d.pending[sent:]

    def _update(self, relay: _Relay) -> None:
        """Each socket: readable wanted while its outgoing bytes are all sent, writable while its
        incoming ones are not."""
        for index, sock in enumerate(relay.socks):
            mask = 0
            if not relay.d[index].pending and not relay.d[index].eof:
                mask |= select.EPOLLIN
            if relay.d[1 - index].pending:
                mask |= select.EPOLLOUT
            if relay.masks[index] != mask:
                relay.masks[index] = mask
                self._epoll.modify(sock.fileno(), mask)

    def _close(self, relay: _Relay) -> None:
        if relay.closed:
            return
        relay.closed = True
        self._open -= 1
        self._state_sent = False
        for sock in relay.socks:
            fd = sock.fileno()
            if self._by_fd.pop(fd, None) is not None:
                self._epoll.unregister(fd)
            sock.close()
