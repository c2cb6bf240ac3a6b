"""Servers for the client-library tests.

This directory runs in its own pytest process (see the Makefile): the etcd3
client registers etcd's protobuf descriptors under the same names as
etcdlite's stubs, so nothing here imports etcdlite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        if "ready to serve client requests" in log.read_text(errors="replace"):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()}")


def start(target: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp / f"{target}.data"
    if target == "etcdlite":
        cmd = [sys.executable, "-m", "etcdlite"]
    else:
        binary = shutil.which("etcd", path=str(VENV_BIN)) or shutil.which("etcd")
        if binary is None:
            pytest.skip("real etcd is not installed")
        peer = f"http://127.0.0.1:{free_port()}"
        cmd = [binary, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"default={peer}", "--unsafe-no-fsync"]
    cmd += ["--name", "default", "--data-dir", str(data), "--listen-client-urls", url,
            "--advertise-client-urls", url]
    log = tmp / f"{target}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    _wait_ready(proc, port, log)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["etcdlite", "etcd"])
def endpoint(request, tmp_path):
    """(host, port) of a fresh server: etcdlite, or real etcd for comparison."""
    proc, port = start(request.param, tmp_path)
    try:
        yield "127.0.0.1", port
    finally:
        stop(proc)


@pytest.fixture
def client(endpoint):
    assert os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION") == "python", \
        "run tests/clients with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (make test-clients)"
    import etcd3

    c = etcd3.client(host=endpoint[0], port=endpoint[1], timeout=10)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def differential(tmp_path):
    """Run ``scenario(client)`` against etcdlite and real etcd; return both results.

    The test compares them (and asserts concrete values, so both being wrong
    the same way still fails).
    """
    import etcd3

    procs = []

    def run(scenario):
        results = {}
        for target in ("etcdlite", "etcd"):
            proc, port = start(target, tmp_path)
            procs.append(proc)
            c = etcd3.client(host="127.0.0.1", port=port, timeout=10)
            try:
                results[target] = scenario(c)
            finally:
                c.close()
                stop(proc)
        return results["etcdlite"], results["etcd"]

    yield run
    for proc in procs:
        if proc.poll() is None:
            stop(proc)
