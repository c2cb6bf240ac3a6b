"""``etcdlite.Server``: an etcdlite in its own process, for tests and scripts.

Only the standard library is imported here, so a program that uses an etcd
client (which registers etcd's protobuf descriptors itself) can start a
server without loading etcdlite's own stubs into its process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """The server did not start (its log is in the message)."""


class Server:
    """Start with ``start()`` or ``with Server() as s:``; ``s.endpoint`` is its client URL.

    A free port and a temporary data dir are chosen unless given; the data dir
    is removed on ``stop()`` only if it was made here.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, port: int | None = None,
                 host: str = "127.0.0.1", args: Sequence[str] = (), startup_timeout: float = 20.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="etcdlite-"))
        self._args = list(args)
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir.with_name(self.data_dir.name + ".log") if not self._own_dir \
            else self.data_dir / "etcdlite.log"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        data = self.data_dir / "data" if self._own_dir else self.data_dir
        return [sys.executable, "-m", "etcdlite", "--data-dir", str(data),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint, *self._args]

    def start(self) -> Server:
        if self._proc is not None:
            return self
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"etcdlite exited with {self._proc.returncode}:\n{self._log()}")
            if "ready to serve client requests" in self._log():
                try:
                    socket.create_connection((self.host, self.port), timeout=0.2).close()
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        self.kill()
        raise ServerError(f"etcdlite not ready after {self._timeout}s:\n{self._log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            code = proc.returncode
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return code

    def kill(self) -> None:
        """SIGKILL, keeping the data dir (for crash tests)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
