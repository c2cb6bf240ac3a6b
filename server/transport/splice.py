"""The relay process: each gRPC connection of the muxed client port, moved byte for byte to gRPC core.

The client-port mux (``front.py``) hands each gRPC connection over with ``hand_over(sock, head)``: the
socket (SCM_RIGHTS on a SOCK_SEQPACKET pair) with the bytes already read from it. The relay process
connects it to gRPC core's internal abstract unix socket and moves its bytes both ways; the event
loop never sees them, and the server closes its own descriptor of the client's socket at once.

Why a process: grpcio cannot take an accepted socket (core's ``grpc_server_add_channel_from_fd`` is
not exported), so a muxed gRPC connection reaches core through a unix connection, whose two ends are
descriptors like the client's socket: three per connection in one process, against etcd's one. Split,
the server process holds one (core's end) and the relay process two (the client's socket and its end
of the unix connection), so either can keep ~RLIMIT_NOFILE/2 connections open.

The loop is C (``_splice.c``, built by ``pip install`` where a compiler is at hand): the program
``etcdlite-relay`` (no interpreter: ~1 MiB of memory), else the same loop as an extension module in a
bare interpreter (``python -I -S``, ~10 MiB); without a compiler, Python (``relay_loop.py``, loaded by file
in a bare interpreter; ``ETCDLITE_PY_SPLICE=1`` forces it). The process holds nothing of the server's.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger("etcdlite.relay")

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
RESTART_DELAY_SECONDS = 1.0

# The relay process: it ignores the terminal's and a process group's stop signals, as the server
# ends it by closing its end of the control socket (also when the server is killed).
_BOOT = """
import importlib.util, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
module, path, ctl, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = importlib.util.spec_from_file_location(module, path)
loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loop)
os.write(ctl, b"ready")
loop.serve(ctl, name)
"""


class RelayError(RuntimeError):
    """The relay process could not be started."""


RELAY_PROGRAM = "etcdlite-relay"


def relay_program() -> str | None:
    """The relay loop built as a program of its own (setup.py), where it was built.
    ``ETCDLITE_RELAY_MODULE=1`` (tests) runs the extension module in an interpreter instead."""
    if os.environ.get("ETCDLITE_PY_SPLICE") or os.environ.get("ETCDLITE_RELAY_MODULE"):
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), RELAY_PROGRAM)
    return path if os.access(path, os.X_OK) else None


def relay_command(ctl_fd: int, name: str) -> list[str]:
    """The relay process's command line: the program, else a bare interpreter running the loop."""
    program = relay_program()
    if program is not None:
        return [program, str(ctl_fd), name]
    module, path = relay_loop_file()
    return [sys.executable, "-I", "-S", "-c", _BOOT, module, path, str(ctl_fd), name]


def relay_loop_file() -> tuple[str, str]:
    """(module name, file) of the loop a bare interpreter runs where the program is missing: the C one
    where it was built."""
    if not os.environ.get("ETCDLITE_PY_SPLICE"):
        spec = importlib.util.find_spec(f"{__package__}._splice")
        if spec is not None and spec.origin:
            return "_splice", spec.origin
    return "relay_loop", os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay_loop.py")


class GrpcRelay:
    """Owns the relay process: ``start()``, ``hand_over()``, ``close()`` (which cuts every relayed
    connection). ``on_refused(errno)`` hears of each connection the relay could not take; a relay
    process that dies is started again."""

    def __init__(self, name: str, on_refused: Callable[[int], None]) -> None:
        self.name = name  # gRPC core's abstract unix socket, without its leading NUL
        self._handed_over = 0  # since the relay process started
        self._received = 0  # of those, how many it took, and how many of them are open, as it
        self._open = 0  # said last
        self._on_refused = on_refused
        self._ctl: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restart: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connections(self) -> int:
        """Connections handed over and not ended: each holds gRPC core's end in this process."""
        return self._open + self._handed_over - self._received

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(relay_command(theirs.fileno(), self.name),
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise RelayError(f"cannot start the gRPC relay process: {exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        ready = b""
        try:
            ready = await asyncio.wait_for(self._loop.sock_recv(ours, 16), START_TIMEOUT_SECONDS)
        except (TimeoutError, OSError):
            pass
        finally:
            if ready != b"ready" or self._closing:  # also when cancelled
                ours.close()
                self._stop_process()
        if ready != b"ready" or self._closing:
            raise RelayError(f"the gRPC relay process did not start (exit code {self._proc.returncode})")
        self._ctl = ours
        self._handed_over = self._received = self._open = 0
        self._loop.add_reader(ours.fileno(), self._on_report)

    def hand_over(self, sock: socket.socket, head: bytes) -> None:
        """Pass a client's gRPC connection to the relay (or refuse it); closes ``sock`` here."""
        try:
            if self._ctl is None:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "no relay process")
            socket.send_fds(self._ctl, [head], [sock.fileno()], socket.MSG_DONTWAIT)
            self._handed_over += 1
        except OSError as exc:  # EAGAIN: the relay is that far behind; EPIPE: it died
            self._on_refused(exc.errno or 0)
        finally:
            sock.close()

    def _on_report(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                message = self._ctl.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:
                self._lost()
                return
            what, *values = message.split()
            if what == b"refused":
                self._on_refused(int(values[0]))
            elif what == b"state":
                self._received, self._open = int(values[0]), int(values[1])

    def _lost(self) -> None:
        """The relay process ended by itself (killed, crashed): its connections are gone; start another."""
        assert self._loop is not None and self._ctl is not None
        self._loop.remove_reader(self._ctl.fileno())
        self._ctl.close()
        self._ctl = None
        self._handed_over = self._received = self._open = 0
        self._stop_process()
        if self._closing:
            return
        log.error("the gRPC relay process ended; starting it again",
                  extra={"fields": {"exit-code": self._proc.returncode if self._proc else None}})
        self._restart = self._loop.create_task(self._start_again(), name="grpc-relay-restart")

    async def _start_again(self) -> None:
        while not self._closing:
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            try:
                await self.start()
                return
            except RelayError as exc:
                log.error("cannot start the gRPC relay process", extra={"fields": {"error": str(exc)}})

    def _stop_process(self) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        """End the relay process and with it every relayed connection."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        if self._ctl is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._ctl.fileno())
            self._ctl.close()  # EOF: the relay closes its connections and exits
            self._ctl = None
        self._stop_process()
