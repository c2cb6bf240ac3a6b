"""The TLS front (https client URLs) and the client-port mux share one descriptor budget.

RLIMIT_NOFILE less etcd's reserve of 150 bounds the descriptors client connections hold in the
server process, whichever listener took them: a TLS connection holds three once routed (the TLS
socket, the plain one behind it, and its other end in gRPC core), a plain one on a port that serves
http and https alike is handed by the front to the mux and holds one there.  At the budget a new
connection is refused at once, the connections open keep working, and connections that ended free
their share again -- through the relay in C and the one in Python.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from harness import EtcdProcess, pb

pytestmark = pytest.mark.timeout(180)

LIMIT = 512  # RLIMIT_NOFILE the servers run with
BUDGET = LIMIT - 150  # descriptors client connections may hold (front.RESERVED_DESCRIPTORS)
H2_CLIENT_START = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + SETTINGS
H2_SETTINGS = 0x4
RELAYS = {"C": None, "Python": {"ETCDLITE_PY_TLS_RELAY": "1"}}


class LimitedTlsProcess(EtcdProcess):
    """etcdlite under ``prlimit --nofile=N:N`` on ``urls`` (https with --auto-tls)."""

    def __init__(self, data_dir: Path, urls: str, env: dict[str, str] | None) -> None:
        super().__init__("etcdlite", data_dir, args=["--auto-tls"], env=env)
        self.urls = urls.format(port=self.port)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--", sys.executable, "-m", "etcdlite",
                "--data-dir", str(self.data_dir), "--listen-client-urls", self.urls,
                "--advertise-client-urls", self.endpoint, *self.args]

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            cert = ssl.get_server_certificate(("127.0.0.1", self.port)).encode()
            creds = grpc.ssl_channel_credentials(root_certificates=cert)
            self._channel = grpc.secure_channel(self.address, creds, options=[
                ("grpc.ssl_target_name_override", "127.0.0.1"), ("grpc.enable_retries", 0)])
        return self._channel


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., LimitedTlsProcess]]:
    started: list[LimitedTlsProcess] = []

    def run(urls: str, env: dict[str, str] | None = None) -> LimitedTlsProcess:
        srv = LimitedTlsProcess(tmp_path / f"d{len(started)}", urls, env)
        started.append(srv)
        return srv.start()  # type: ignore[return-value]

    yield run
    for srv in started:
        srv.stop()


@pytest.fixture
def many_sockets() -> Iterator[None]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * LIMIT:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _tls_h2_connect(port: int, timeout: float = 3.0) -> ssl.SSLSocket | None:
    """An idle gRPC-style connection (TLS, ALPN h2) the server answered with its SETTINGS, or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock = ctx.wrap_socket(raw)
        sock.sendall(H2_CLIENT_START)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        raw.close()
        return None
    if len(head) == 9 and head[3] == H2_SETTINGS:
        return sock
    sock.close()
    return None


def _plain_http_connect(port: int, timeout: float = 3.0) -> socket.socket | None:
    """A keep-alive plain HTTP/1.1 connection that answered GET /health, or None."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError:
        answer = b""
    if answer.startswith(b"HTTP/1.1 200"):
        return sock
    sock.close()
    return None


def _fill(connect: Callable[[], socket.socket | None]) -> tuple[list[socket.socket], float]:
    """Connections until one is refused; (them, how long the refused one took)."""
    socks: list[socket.socket] = []
    for _ in range(2 * LIMIT):
        started = time.monotonic()
        sock = connect()
        if sock is None:
            return socks, time.monotonic() - started
        socks.append(sock)
    raise AssertionError(f"never refused: {len(socks)} connections open")


def _server_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("relay", sorted(RELAYS))
def test_tls_connections_count_three_descriptors_against_the_budget(start, many_sockets, relay: str) -> None:
    srv = start("https://127.0.0.1:{port}", RELAYS[relay])
    kv = srv.stubs().kv  # its connection is open before the flood
    kv.Put(pb.PutRequest(key=b"k", value=b"before"), timeout=10)
    for _ in range(2):  # the second round sees the first one's connections gone
        socks, refused_after = _fill(lambda: _tls_h2_connect(srv.port))
        try:
            held = len(socks)
            assert BUDGET // 3 - 5 <= held <= BUDGET // 3, held  # the flood's and the probe's connections
            assert refused_after < 2.0, refused_after  # refused at once, not left waiting
            assert _server_descriptors(srv.pid) < LIMIT - 50  # the reserve is the server's
            assert kv.Put(pb.PutRequest(key=b"k", value=b"at the limit"), timeout=10).header.revision > 1
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 10
        while _server_descriptors(srv.pid) > 3 * 10 + 60 and time.monotonic() < deadline:
            time.sleep(0.1)
    log = srv.log()
    assert 1 <= log.count("refused client connections") <= 4, log[-3000:]
    assert srv.alive()


def test_plain_connections_on_a_shared_port_count_in_the_same_budget(start, many_sockets) -> None:
    """On http://h:p,https://h:p the front takes every connection and hands the plain ones to the mux:
    plain HTTP connections fill the budget one descriptor each, and then a TLS connection is refused too."""
    srv = start("http://127.0.0.1:{port},https://127.0.0.1:{port}")
    kv = srv.stubs().kv
    socks, _ = _fill(lambda: _plain_http_connect(srv.port))
    try:
        assert BUDGET - 10 <= len(socks) <= BUDGET, len(socks)
        assert _tls_h2_connect(srv.port) is None
        assert kv.Put(pb.PutRequest(key=b"k", value=b"at the limit"), timeout=10).header.revision > 1
        socks[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert socks[0].recv(4096).startswith(b"HTTP/1.1 200")
        for sock in socks[:20]:
            sock.close()
        del socks[:20]
        deadline = time.monotonic() + 10
        again = None
        while again is None and time.monotonic() < deadline:
            again = _tls_h2_connect(srv.port)
        assert again is not None, "no TLS connection accepted after plain ones ended"
        again.close()
    finally:
        for sock in socks:
            sock.close()


def test_a_shared_port_serves_plain_grpc_through_the_relay_process(start) -> None:
    """A plain gRPC connection on a port that also serves https goes through the mux's relay process,
    which gives gRPC core's refusal of a too-large message grpc-go's words."""
    srv = start("http://127.0.0.1:{port},https://127.0.0.1:{port}")
    request = pb.PutRequest(key=b"k", value=b"x" * (3 << 20)).SerializeToString()
    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 2**31 - 1)])
    put = channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=lambda b: b,
                              response_deserializer=pb.PutResponse.FromString)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            put(request, timeout=20)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.value.details().startswith("grpc: received message larger than max (")
        assert put(pb.PutRequest(key=b"k", value=b"small").SerializeToString(), timeout=10).header.revision == 2
    finally:
        channel.close()
