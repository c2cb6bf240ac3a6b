"""The TLS front's relays in C (``_tlsrelay.c``), where the extension was built and can use the ssl
module's own OpenSSL; ``tlsconn.py`` relays in Python otherwise (``ETCDLITE_PY_TLS_RELAY=1`` forces it).

``NativeRelays.take(conn)`` hands a connection whose handshake, checks and routing are done to the C
loop's thread: the TLS socket, the plain socket and a reference on the connection's OpenSSL object.
When the loop ends a relay it reports the relay's id, and ``on_done`` hears of it (the TLS front
then forgets the client certificate it kept for that connection and gives its descriptors back to
the budget).  The ids go through a non-blocking pipe the front's thread drains at once; were it
ever full, an id would be lost and its three descriptors stay counted: the budget errs on the side
of refusing, never of running out.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable

try:
    from . import _tlsrelay as _native
except ImportError:  # built without a C compiler
    _native = None

log = logging.getLogger("etcdlite.tls")

_MESSAGE = struct.Struct("=ciiQQ")  # as _tlsrelay.c reads it: b"n", TLS fd, plain fd, SSL*, id; or b"q"
_ID = struct.Struct("=Q")


def _loaded_libssl() -> str | None:
    """The one libssl this process has mapped (the ssl module's); None if none or several."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if re.search(r"/libssl\.so[.\d]*$", line)}
    except OSError:
        return None
    return paths.pop() if len(paths) == 1 else None


def available() -> bool:
    if _native is None or os.environ.get("ETCDLITE_PY_TLS_RELAY"):
        return False
    path = _loaded_libssl()
    return path is not None and bool(_native.init(path))


class NativeRelays:
    """Owns the C loop's thread: ``take()`` hands it connections, ``close()`` ends them all."""

    def __init__(self, on_done: Callable[[int], None]) -> None:
        assert _native is not None
        self._on_done = on_done
        self._ctl_r, self._ctl_w = os.pipe()
        self.done_r, self._done_w = os.pipe()
        os.set_blocking(self._ctl_r, False)
        os.set_blocking(self.done_r, False)
        os.set_blocking(self._done_w, False)  # a full pipe loses an id (a stale CN entry), never blocks the loop
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=_native.serve, args=(self._ctl_r, self._done_w),
                                        name="client-tls-relay", daemon=True)
        self._thread.start()

    def take(self, tls: ssl.SSLSocket, plain: socket.socket, relay_id: int) -> bool:
        """Hand both sockets over (the caller no longer watches them); False: relay them yourself."""
        assert _native is not None
        pointer = _native.ssl_pointer(tls._sslobj, tls.fileno())  # type: ignore[attr-defined]
        if not pointer:
            return False
        with self._lock:
            if self._stopping:
                _native.release(pointer)
                return False
            os.write(self._ctl_w, _MESSAGE.pack(b"n", tls.detach(), plain.detach(), pointer, relay_id))
        return True

    def read_done(self) -> None:
        """Report the relays the loop ended (call when ``done_r`` is readable)."""
        try:
            data = os.read(self.done_r, _ID.size * 512)
        except BlockingIOError:
            return
        for (relay_id,) in _ID.iter_unpack(data[: len(data) - len(data) % _ID.size]):
            self._on_done(relay_id)

    def close(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            os.write(self._ctl_w, _MESSAGE.pack(b"q", -1, -1, 0, 0))
        self._thread.join()
        for fd in (self._ctl_r, self._ctl_w, self.done_r, self._done_w):
            os.close(fd)
