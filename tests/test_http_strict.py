"""Issue 16.5: HTTP/1.1 on the client port is parsed as strictly as etcd's Go server parses it.

Each malformed request head goes, byte for byte, to etcd 3.5.1's client port and to etcdlite's;
the status line, headers (but Date) and body must be the same, and so must whether the
connection is closed afterwards.  Heads Go accepts (bare LF, folded lines, HTTP/1.2...) are
accepted too.  Where etcd has nothing to compare with (timeouts, a client leaving mid-body, its
cmux resetting connections) etcdlite's behaviour is asserted on its own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from etcdlite.transport.front import ClientPortMux
from etcdlite.transport.httpconn import Timeouts
from etcdlite.transport.httpd import HttpServer, Request, Response, StreamResponse
from harness import ETCD_BIN, EtcdProcess, run_parallel

POST = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n"
GET = b"GET /health HTTP/1.1\r\nHost: x\r\n"

# name: raw request; each is sent on a fresh connection to both servers
CASES: dict[str, bytes] = {
    # Content-Length: only plain decimal digits below 2^63, one value
    "content-length-plus": POST + b"Content-Length: +5\r\n\r\n{}   ",
    "content-length-20-digits": POST + b"Content-Length: 12345678901234567890\r\n\r\n{}",
    "content-length-over-2^63": POST + b"Content-Length: 9999999999999999999\r\n\r\n{}",
    "content-length-negative": POST + b"Content-Length: -1\r\n\r\n{}",
    "content-length-hex": POST + b"Content-Length: 0x2\r\n\r\n{}",
    "content-length-list": POST + b"Content-Length: 2, 2\r\n\r\n{}",
    "content-length-two-values": POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "content-length-same-twice": POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "content-length-spaces": POST + b"Content-Length:  2 \r\n\r\n{}",
    "content-length-empty": POST + b"Content-Length: \r\n\r\n",
    # Transfer-Encoding: a single "chunked", else 501 (ignored in HTTP/1.0)
    "te-gzip-chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "te-identity": POST + b"Transfer-Encoding: identity\r\n\r\n",
    "te-empty": POST + b"Transfer-Encoding: \r\n\r\n",
    "te-two-fields": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "te-chunked-twice-in-one": POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
    "te-Chunked": POST + b"Transfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "te-and-content-length": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "te-in-http10": b"POST /v3/kv/range HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Length: 2\r\n\r\n{}",
    "chunk-size-not-hex": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk-size-too-large": POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
    # the request target, as url.ParseRequestURI
    "target-unclosed-ipv6": b"GET http://[/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "target-relative": b"GET health HTTP/1.1\r\nHost: x\r\n\r\n",
    "target-bad-escape": b"GET /hea%zzlth HTTP/1.1\r\nHost: x\r\n\r\n",
    "target-control-byte": b"GET /hea\x01lth HTTP/1.1\r\nHost: x\r\n\r\n",
    "target-bad-port": b"GET http://foo:bar/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "target-escaped": b"GET /hea%6Cth HTTP/1.1\r\nHost: x\r\n\r\n",
    "target-absolute": b"GET http://foo/health HTTP/1.1\r\nHost: x\r\n\r\n",
    # request line
    "method-not-a-token": b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "two-spaces": b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "space-in-target": b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
    "http-0.9": b"GET /health\r\n\r\n",
    "http-1.2": b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n",
    "http-signed-version": b"GET /health HTTP/+1.1\r\nHost: x\r\n\r\n",
    "http-1.0-without-host": b"GET /health HTTP/1.0\r\n\r\n",
    # header lines
    "no-host": b"GET /health HTTP/1.1\r\n\r\n",
    "two-hosts": GET + b"Host: y\r\n\r\n",
    "bad-host": b"GET /health HTTP/1.1\r\nHost: x y\r\n\r\n",
    "empty-host": b"GET /health HTTP/1.1\r\nHost:\r\n\r\n",
    "line-without-colon": GET + b"foo\r\n\r\n",
    "space-before-colon": GET + b"foo : bar\r\n\r\n",
    "name-not-a-token": GET + b"f(o: bar\r\n\r\n",
    "empty-name": GET + b": bar\r\n\r\n",
    "first-line-folded": b"GET /health HTTP/1.1\r\n Host: x\r\n\r\n",
    "folded-value": GET + b"foo: bar\r\n baz\r\n\r\n",
    "nul-in-value": GET + b"X: a\x00b\r\n\r\n",
    "cr-in-value": GET + b"X: a\rb\r\n\r\n",
    "high-byte-in-value": GET + b"X: a\xffb\r\n\r\n",
    "bare-lf": b"GET /health HTTP/1.1\nHost: x\n\n",
    "head-over-1-mib": GET + b"X: " + b"a" * 2_000_000,
}


class Answer(NamedTuple):
    status_line: bytes
    headers: tuple[bytes, ...]  # sorted, Date dropped
    body: bytes
    closed: bool  # the server closed the connection after it

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> Answer | None:
    """Send ``raw`` on a new connection and read one answer (None: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except ConnectionError:
            pass  # refused before all of it was read: its answer is what counts
        buf, closed = b"", False
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                lines = buf[:head_end].split(b"\r\n")
                length = [int(v.split(b":")[1]) for v in lines if v.lower().startswith(b"content-length:")]
                if length and len(buf) >= head_end + 4 + length[0]:
                    break
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                closed = True
                break
            if not data:
                closed = True
                break
            buf += data
    if not buf:
        return None
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = tuple(sorted(h for h in lines[1:] if not h.lower().startswith(b"date:")))
    return Answer(lines[0], headers, body, closed)


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    base = tmp_path_factory.mktemp("strict-http")
    targets = ["etcdlite"] + (["etcd"] if ETCD_BIN else [])
    procs = run_parallel({t: (lambda t=t: EtcdProcess(t, base / t, args=["--unsafe-no-fsync"]).start())
                          for t in targets})
    yield {t: p.port for t, p in procs.items()}
    log = procs["etcdlite"].log(whole=True)
    for p in procs.values():
        p.stop()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]


# etcd's cmux drops these before its HTTP server sees them (a reset, no answer): etcdlite answers
# them as that server would
CMUX_DROPS = {"two-spaces", "space-in-target", "http-0.9"}


@pytest.mark.parametrize("name", list(CASES))
def test_head_answered_as_etcd(name: str, ports: dict[str, int]) -> None:
    if "etcd" not in ports:
        pytest.skip("real etcd is not installed")
    answers = run_parallel({t: (lambda p=p: exchange(p, CASES[name])) for t, p in ports.items()})
    if name in CMUX_DROPS:
        assert answers["etcd"] is None
        lite = answers["etcdlite"]
        assert lite is not None and (lite.status_line, lite.body, lite.closed) == (
            b"HTTP/1.1 400 Bad Request", b"400 Bad Request", True)
        return
    assert answers["etcdlite"] == answers["etcd"]


def test_go_refusals_are_exact(ports: dict[str, int]) -> None:
    """Go's own answer to a request it cannot read (etcdlite's refusals without etcd, too)."""
    go_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    for name in ("content-length-plus", "content-length-20-digits", "target-unclosed-ipv6"):
        with socket.create_connection(("127.0.0.1", ports["etcdlite"]), timeout=10) as sock:
            sock.sendall(CASES[name])
            got = b""
            while data := sock.recv(4096):
                got += data
        assert got == go_400 + b"400 Bad Request", name
    answer = exchange(ports["etcdlite"], CASES["te-gzip-chunked"])
    assert answer is not None and (answer.status_line, answer.body, answer.closed) == (
        b"HTTP/1.1 501 Not Implemented", b"Unsupported transfer encoding", True)


def test_client_leaving_mid_body_is_not_an_error(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--unsafe-no-fsync", "--log-level", "debug"]).start()
    try:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
                sock.sendall(POST + b"Content-Length: 100\r\n\r\n{\"key\":")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(POST + b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"key\":")
        time.sleep(0.5)
        assert exchange(srv.port, GET + b"\r\n").status == 200
    finally:
        srv.stop()
    log = srv.log()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]
    assert log.count("HTTP client left during its request") == 21, log[-3000:]


# -- timeouts, in-process with short ones ------------------------------------------------------

SHORT = Timeouts(idle=0.6, head=0.6, body=0.6)


async def _echo(request: Request) -> Response | StreamResponse:
    """Answers the whole body (read as a unary gateway call reads it), or, for /stream, each piece
    as it comes (as a watch reads its request body: no deadline)."""
    if request.path == "/stream":
        async def pieces() -> Any:
            while data := await request.body.read():
                yield data
        return StreamResponse(200, pieces())
    return Response(200, await request.body.read_all(1 << 20))


async def _served(timeouts: Timeouts, scenario: Callable[[int], Any]) -> Any:
    server = HttpServer(_echo, "test", timeouts)
    port = await server.listen("127.0.0.1", 0)
    try:
        return await scenario(port)
    finally:
        server.close()
        await server.wait_closed()


async def _read_to_eof(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), within)
    return data, time.monotonic() - start


@pytest.mark.parametrize("sent, answer", [
    (b"", b""),  # a connection that never sends a byte: closed silently
    (b"GET / HTTP/1.1", b"HTTP/1.1 408 Request Timeout"),  # a head without its CRLF
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 1000, b"HTTP/1.1 408 Request Timeout"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12", b"HTTP/1.1 408 Request Timeout"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12", b"HTTP/1.1 408 Request Timeout"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK"),  # kept alive, then idle: closed
], ids=["idle-new-connection", "no-crlf", "slow-head", "slow-body", "slow-chunked-body", "idle-keep-alive"])
def test_slow_and_idle_connections_are_closed(sent: bytes, answer: bytes) -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        data, took = await _read_to_eof(reader, 5)
        assert data.startswith(answer) and (answer or not data), data
        assert 0.4 < took < 3, took
        writer.close()
    asyncio.run(_served(SHORT, scenario))


def test_head_trickling_in_is_timed_from_its_first_byte() -> None:
    """A byte every 0.2 s never idles, but the head must still be whole within its timeout."""
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        for byte in b"GET /" + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                break
        data, _ = await _read_to_eof(reader, 5)
        assert data.startswith(b"HTTP/1.1 408 Request Timeout"), data
        assert time.monotonic() - start < 3
        writer.close()
    asyncio.run(_served(SHORT, scenario))


def test_a_streamed_request_body_has_no_deadline() -> None:
    """A watch's request body may stay open and quiet for as long as the watch lives."""
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
        await asyncio.sleep(3 * SHORT.body)
        writer.write(b"2\r\ncd\r\n0\r\n\r\n")
        data = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"), data
        writer.close()
    asyncio.run(_served(SHORT, scenario))


def test_client_port_front_closes_a_connection_that_never_speaks() -> None:
    async def scenario() -> None:
        mux = ClientPortMux("etcdlite-test-no-grpc", HttpServer(_echo, "test", SHORT))
        await mux.start()
        port = await mux.listen("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data, took = await _read_to_eof(reader, 5)
            assert data == b"" and 0.4 < took < 3, (data, took)
            writer.close()
        finally:
            mux.close()
            mux.abort_connections()
            await mux.wait_closed()
    asyncio.run(scenario())
