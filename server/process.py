"""``etcdlite.Server``: an etcdlite in its own process, for tests and scripts.

Only the standard library is imported here, so a program that uses an etcd
client (which registers etcd's protobuf descriptors itself) can start a
server without loading etcdlite's own stubs into its process.  The project's
own test harness starts every server (etcdlite, and real etcd for the
differential tests) through this class.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

READY_LINE = "ready to serve client requests"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServerError(RuntimeError):
    """The server did not start (its log is in the message)."""


class FaultInjectionError(RuntimeError):
    """``/debug/inject`` refused a fault (its message says why), or the server does not serve it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Server:
    """Start with ``start()`` or ``with Server() as s:``; ``s.endpoint`` is its client URL.

    A free port and a temporary data dir are chosen unless given; the data dir is removed on
    ``stop()`` only if it was made here.  ``kill()`` is a crash (SIGKILL): the data dir stays and
    ``start()`` starts the server again on the same port.  The output goes to ``log_path``,
    appended to across restarts.  ``fault_injection=True`` starts it with
    ``--experimental-fault-injection``, for ``inject()``, ``faults()`` and ``clear_faults()``.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, port: int | None = None,
                 host: str = "127.0.0.1", args: Sequence[str] = (), startup_timeout: float = 20.0,
                 env: Mapping[str, str] | None = None, fault_injection: bool = False) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = data_dir is None
        self._base = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="etcdlite-"))
        self.data_dir = self._base / "data" if self._own_dir else self._base
        self.args = list(args)
        if fault_injection and "--experimental-fault-injection" not in self.args:
            self.args.append("--experimental-fault-injection")
        self.startup_timeout = startup_timeout
        self.env = dict(env) if env else {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self._base / "etcdlite.log" if self._own_dir else \
            self._base.with_name(self._base.name + ".log")
        self._log_offset = 0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "etcdlite", "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint, *self.args]

    def environment(self) -> dict[str, str]:
        """The parent's environment without etcd's own variables (they would change the flags), plus ``env``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        env.setdefault("GRPC_VERBOSITY", "NONE")
        env.update(self.env or {})
        return env

    def start(self, wait: bool = True) -> Server:
        if self.alive():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"==== start {self.command()}\n".encode())
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=self.environment(), stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def log(self, whole: bool = False) -> str:
        """What the server printed since its last start (``whole``: since the first)."""
        try:
            with open(self.log_path, "rb") as f:
                if not whole:
                    f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """Whether it serves yet: etcd's ready line is in the log and the port takes a connection."""
        if READY_LINE not in self.log():
            return False
        try:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def wait_ready(self, timeout: float | None = None) -> None:
        assert self.proc is not None
        limit = timeout or self.startup_timeout
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.command()[0]} exited with {self.proc.returncode} before it was ready; "
                                  f"command {self.command()}\n--- log:\n{self.log()}")
            if self.ready():
                return
            time.sleep(0.02)
        rc = self.proc.poll()
        self.kill()
        raise ServerError(f"not ready after {limit}s (exit code {rc}); command {self.command()}\n"
                          f"--- log:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        proc = self.proc
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
            shutil.rmtree(self._base, ignore_errors=True)
        return code

    def kill(self) -> None:
        """SIGKILL, keeping the data dir (for crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- fault injection (the server's /debug/inject; see the README's "Fault injection") ----------
    def inject(self, fault: str, **params: Any) -> dict[str, Any]:
        """Set a fault: ``fault`` is "error", "latency", "pause", "cut-watches" or "expire-lease",
        ``params`` its fields, e.g. ``inject("error", methods="KV/Put", error="leader-changed")``,
        ``inject("latency", methods="KV/Range", delay=0.2)``, ``inject("pause", duration=1)``,
        ``inject("expire-lease", id=lease_id)``.  Returns the server's answer; raises
        FaultInjectionError when the server refuses (or was started without fault injection)."""
        return self._inject_call("POST", "/" + fault, params)

    def faults(self) -> list[dict[str, Any]]:
        """The faults set now."""
        faults: list[dict[str, Any]] = self._inject_call("GET", "", None)["faults"]
        return faults

    def clear_faults(self) -> int:
        """Clear every fault (paused requests proceed); returns how many were set."""
        cleared: int = self._inject_call("DELETE", "", None)["cleared"]
        return cleared

    def http_endpoint(self) -> str:
        """Where the server answers HTTP: its first --listen-client-http-urls URL, else the client URL."""
        args = self.args
        for i, arg in enumerate(args):
            if arg.startswith("--listen-client-http-urls="):
                urls = arg.partition("=")[2]
            elif arg == "--listen-client-http-urls" and i + 1 < len(args):
                urls = args[i + 1]
            else:
                continue
            return urls.split(",")[0].strip()
        return self.endpoint

    def _inject_call(self, method: str, path: str, params: dict[str, Any] | None) -> dict[str, Any]:
        import urllib.error  # only here: `import etcdlite` stays light (4 MiB less) for a test run that never injects
        import urllib.request

        data = json.dumps(params).encode() if params is not None else None
        request = urllib.request.Request(f"{self.http_endpoint()}/debug/inject{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.headers.get("Content-Type", "").startswith("application/json"):
                raise FaultInjectionError(exc.code, json.loads(body).get("error", "")) from None
            raise FaultInjectionError(exc.code, f"{self.endpoint} does not serve /debug/inject ({exc.code}): "
                                                "start it with --experimental-fault-injection") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FaultInjectionError(0, f"cannot reach {self.http_endpoint()}/debug/inject: {exc}") from None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
