"""The client port's transport, side by side with real etcd where etcd has the behaviour.

* descriptors per connection under a lowered RLIMIT_NOFILE, and what happens at the limit: the
  connections already open keep working, a new one is refused at once (etcd lets it wait in the
  backlog), one warning instead of a log flood;
* oversized gRPC messages refused at their length prefix: the server's peak RSS stays flat during
  twelve concurrent 50 MiB calls, with grpc-go's words;
* ``--max-request-bytes`` at its exact boundary, which etcd draws on the request wrapped for raft;
* the relay process: started again when it dies, gone when the server stops.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from harness import ETCD_BIN, EtcdProcess, pb

pytestmark = pytest.mark.timeout(120)

KiB = 1024
MiB = 1024 * KiB
GRPC_OVERHEAD = 512 * KiB  # etcd: grpc MaxRecvMsgSize = --max-request-bytes + 512 KiB
H2_CLIENT_START = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + SETTINGS
H2_SETTINGS = 0x4
LIMIT = 512  # RLIMIT_NOFILE the servers run with in the limit tests

# (target, extra environment): etcdlite with its C relay loop and with the Python one, and etcd
VARIANTS = {"etcdlite": ("etcdlite", None), "etcdlite-py-relay": ("etcdlite", {"ETCDLITE_PY_SPLICE": "1"}),
            "etcd": ("etcd", None)}


class LimitedProcess(EtcdProcess):
    """A server started under ``prlimit --nofile=N:N`` (prlimit execs it: same pid)."""

    def __init__(self, *args: object, nofile: int, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.nofile = nofile

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", *super().command()]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., EtcdProcess]]:
    started: list[EtcdProcess] = []

    def run(variant: str, args: tuple[str, ...] = (), nofile: int | None = None) -> EtcdProcess:
        target, env = VARIANTS[variant]
        if target == "etcd" and ETCD_BIN is None:
            pytest.skip("real etcd is not installed")
        data = tmp_path / f"{variant}-{len(started)}.data"
        srv = (LimitedProcess(target, data, args=args, env=env, nofile=nofile) if nofile
               else EtcdProcess(target, data, args=args, env=env))
        started.append(srv)
        return srv.start()

    yield run
    for srv in started:
        srv.stop()


def _processes(pid: int) -> list[int]:
    """pid and its descendants (etcdlite's relay process)."""
    out = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _processes(int(child))
        except OSError:
            pass
    return out


def _descriptors(pid: int) -> dict[int, int]:
    return {p: len(os.listdir(f"/proc/{p}/fd")) for p in _processes(pid)}


def _running(pid: int) -> bool:
    """Whether pid is a live process (not gone, not a zombie waiting for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (VmHWM: the peak RSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _h2_connect(port: int, timeout: float = 5.0) -> socket.socket | None:
    """An idle HTTP/2 connection the server answered (its SETTINGS), or None when it closed it
    or did not answer within ``timeout``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(H2_CLIENT_START)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        head = b""
    if len(head) == 9 and head[3] == H2_SETTINGS:
        return sock
    sock.close()
    return None


@pytest.fixture
def many_sockets() -> None:
    """This process holds a thousand client sockets: its soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * LIMIT:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- descriptors


@pytest.mark.parametrize("variant", ["etcdlite", "etcdlite-py-relay", "etcd"])
def test_descriptors_per_idle_grpc_connection(start, many_sockets, variant: str) -> None:
    """etcd: one descriptor per connection. etcdlite: one in the server process (gRPC core's end of
    the relay's unix connection) and two in the relay process (was 7 in one process)."""
    srv = start(variant, nofile=LIMIT)
    n = 150
    before = _descriptors(srv.pid)
    socks = [_h2_connect(srv.port) for _ in range(n)]
    try:
        assert all(socks), "the server closed idle connections under its limit"
        time.sleep(0.3)  # the relay has connected every one to core
        after = _descriptors(srv.pid)
        per_connection = {pid: (after[pid] - before.get(pid, 0)) / n for pid in after}
        assert max(per_connection.values()) <= 2.05, per_connection
        if variant == "etcd":
            assert per_connection[srv.pid] <= 1.05, per_connection
        else:
            assert len(per_connection) == 2, per_connection  # the server and its relay process
            assert per_connection[srv.pid] <= 1.05, per_connection
    finally:
        for s in socks:
            if s is not None:
                s.close()


@pytest.mark.parametrize("variant", ["etcdlite", "etcdlite-py-relay", "etcd"])
def test_at_the_descriptor_limit_open_connections_keep_working(start, many_sockets, variant: str) -> None:
    """Fill the server's descriptor table with idle gRPC connections. Both keep serving the
    connections they have; etcdlite refuses a new one at once (etcd leaves it waiting in the
    backlog: a client sees a timeout), logs it once, not per connection, and accepts again when
    descriptors free up."""
    srv = start(variant, nofile=LIMIT)
    existing = grpc.insecure_channel(srv.address)
    kv = pb_kv(existing)
    kv.Put(pb.PutRequest(key=b"k", value=b"before"), timeout=10)
    socks: list[socket.socket] = []
    try:
        refused_after = None
        for _ in range(2 * LIMIT):
            started = time.monotonic()
            sock = _h2_connect(srv.port, timeout=3.0)
            if sock is None:
                refused_after = time.monotonic() - started
                break
            socks.append(sock)
        assert refused_after is not None, "never reached the limit"
        held = len(socks)
        if variant == "etcd":
            assert held >= LIMIT - 160, held  # etcd keeps 150 descriptors for itself (embed/etcd.go)
        else:  # RLIMIT_NOFILE is per process: the relay process holds two per connection
            assert held >= (LIMIT - 40) // 2, held
        assert kv.Put(pb.PutRequest(key=b"k", value=b"at the limit"), timeout=10).header.revision == 3
        if variant != "etcd":
            assert refused_after < 2.0, refused_after  # refused, not left waiting
            for _ in range(20):
                assert _h2_connect(srv.port, timeout=3.0) is None
            log = srv.log()
            assert "out of system resource" not in log
            assert log.count("refused client connections") <= 2, log[-3000:]
        for sock in socks[:50]:
            sock.close()
        del socks[:50]
        deadline = time.monotonic() + 10
        again = None
        while again is None and time.monotonic() < deadline:
            again = _h2_connect(srv.port, timeout=3.0)
        assert again is not None, "no connection accepted after descriptors were freed"
        again.close()
        assert srv.alive()
    finally:
        for sock in socks:
            sock.close()
        existing.close()


@pytest.mark.parametrize("variant", ["etcdlite", "etcdlite-py-relay"])
def test_connections_that_ended_are_no_longer_counted(start, many_sockets, variant: str) -> None:
    """Four rounds of 120 gRPC connections opened and closed again: 480 in all, more than the
    362 the port keeps open at once under its limit, so each round must see the last one's gone."""
    srv = start(variant, nofile=LIMIT)
    for _ in range(4):
        socks = [_h2_connect(srv.port) for _ in range(120)]
        assert all(socks)
        for sock in socks:
            sock.close()  # type: ignore[union-attr]
        time.sleep(0.3)
    assert "refused client connections" not in srv.log()


def _whole_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read whole (head and body may come in separate reads)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return data[:len(head) + 4] + body


def _http_connect(port: int, timeout: float = 5.0) -> socket.socket | None:
    """A keep-alive HTTP/1.1 connection that answered GET /health, or None."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _whole_response(sock)
    except OSError:
        answer = b""
    if answer.startswith(b"HTTP/1.1 200"):
        return sock
    sock.close()
    return None


@pytest.mark.parametrize("variant", ["etcdlite", "etcd"])
def test_http_connections_leave_the_server_its_reserve(start, many_sockets, variant: str) -> None:
    """Idle HTTP/1.1 connections up to the limit: like etcd, etcdlite keeps 150 descriptors of
    RLIMIT_NOFILE for itself, so writes (the data dir) and gRPC calls go on; it refuses the next
    connection at once where etcd leaves it waiting."""
    srv = start(variant, nofile=LIMIT)
    kv = pb_kv(srv.channel())
    kv.Put(pb.PutRequest(key=b"k", value=b"before"), timeout=10)
    socks: list[socket.socket] = []
    try:
        for _ in range(2 * LIMIT):
            sock = _http_connect(srv.port, timeout=3.0)
            if sock is None:
                break
            socks.append(sock)
        assert LIMIT - 170 <= len(socks) <= LIMIT - 140, len(socks)
        for i in range(20):  # each one in the log of the data dir, synced
            assert kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"x" * 1000), timeout=10).header.revision == 3 + i
        socks[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _whole_response(socks[0]).startswith(b"HTTP/1.1 200")
        assert srv.alive()
    finally:
        for sock in socks:
            sock.close()


def pb_kv(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from etcdlite.pb.etcdserverpb import rpc_pb2_grpc

    return rpc_pb2_grpc.KVStub(channel)


# --------------------------------------------------------------------------- oversized messages


@pytest.mark.parametrize("variant", ["etcdlite", "etcdlite-py-relay", "etcd"])
def test_oversized_messages_are_refused_before_they_are_buffered(start, variant: str) -> None:
    """Twelve concurrent 50 MiB Puts (the default gRPC limit is 2 MiB): each refused with grpc-go's
    words, and the server's peak RSS grows by less than one of them (it grew by ~500 MiB when the
    whole message was read before it was refused)."""
    srv = start(variant)
    kv = pb_kv(srv.channel())
    kv.Put(pb.PutRequest(key=b"warm", value=b"up"), timeout=10)
    pids = _processes(srv.pid)
    peak_before = {pid: _status(pid, "VmHWM") for pid in pids}
    request = pb.PutRequest(key=b"k", value=b"x" * (50 * MiB)).SerializeToString()
    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 2**31 - 1)])
    put = channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=lambda b: b,
                              response_deserializer=pb.PutResponse.FromString)
    answers: list[tuple[str, str]] = []

    def call() -> None:
        try:
            put(request, timeout=60)
            answers.append(("OK", ""))
        except grpc.RpcError as exc:
            answers.append((exc.code().name, exc.details()))

    try:
        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        channel.close()
    limit = 1536 * KiB + GRPC_OVERHEAD
    assert answers == [("RESOURCE_EXHAUSTED",
                        f"grpc: received message larger than max ({len(request)} vs. {limit})")] * 12
    growth = {pid: _status(pid, "VmHWM") - peak_before[pid] for pid in pids}
    assert max(growth.values()) < 40 * KiB, growth  # KiB; one message is 51,200 KiB
    assert kv.Range(pb.RangeRequest(key=b"warm"), timeout=10).count == 1


def test_oversized_message_on_a_port_grpc_serves_itself(start) -> None:
    """Without the mux, gRPC core refuses at the prefix too, with etcd's numbers in core's words."""
    srv = start("etcdlite", args=("--client-http-mux=false",))
    request = pb.PutRequest(key=b"k", value=b"x" * (3 * MiB))
    with pytest.raises(grpc.RpcError) as info:
        pb_kv(srv.channel()).Put(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (f"SERVER: Received message larger than max "
                                    f"({request.ByteSize()} vs. {1536 * KiB + GRPC_OVERHEAD})")


# --------------------------------------------------------------------------- --max-request-bytes


def _varint_len(v: int) -> int:
    return max(1, (v.bit_length() + 6) // 7)


def etcd_raft_request_size(size: int, member_id: int, username: str = "", auth_revision: int = 0) -> int:
    """etcd's InternalRaftRequest{header: RequestHeader{ID, username, auth_revision}, put: <size bytes>}."""
    request_id = (member_id & 0xFFFF) << 48 | ((time.time_ns() // 1_000_000) & (2**40 - 1)) << 8
    header = 1 + _varint_len(request_id)
    if username:
        header += 1 + _varint_len(len(username)) + len(username)
    if auth_revision:
        header += 1 + _varint_len(auth_revision)
    return 2 + _varint_len(header) + header + 1 + _varint_len(size) + size


def _put_of_size(size: int) -> pb.PutRequest:
    for n in range(size, max(size - 8, -1), -1):
        request = pb.PutRequest(key=b"k", value=b"v" * n)
        if request.ByteSize() == size:
            return request
    raise AssertionError(size)


def _txn_of_size(size: int) -> pb.TxnRequest:
    for n in range(size, max(size - 16, -1), -1):
        request = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"v" * n))])
        if request.ByteSize() == size:
            return request
    raise AssertionError(size)


def _largest_accepted(limit: int, member_id: int, username: str = "", auth_revision: int = 0) -> int:
    size = limit
    while etcd_raft_request_size(size, member_id, username, auth_revision) > limit:
        size -= 1
    return size


def _outcome(call: Callable[[], object]) -> str:
    try:
        call()
        return "ok"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"


TOO_LARGE = "INVALID_ARGUMENT: etcdserver: request is too large"


@pytest.mark.parametrize("variant", ["etcdlite", "etcd"])
def test_max_request_bytes_boundary(start, variant: str) -> None:
    """A write is refused when the request wrapped for raft exceeds the limit: a Put of exactly
    --max-request-bytes is refused, and the largest one accepted depends on the member ID (the
    request ID's size), and on the caller's user name and auth revision."""
    limit = 4096
    srv = start(variant, args=("--max-request-bytes", str(limit)))
    stubs = srv.stubs()
    member_id = stubs.kv.Put(pb.PutRequest(key=b"a", value=b"1"), timeout=10).header.member_id
    largest = _largest_accepted(limit, member_id)
    assert largest < limit - 12
    got = {size: _outcome(lambda size=size: stubs.kv.Put(_put_of_size(size), timeout=10))
           for size in (largest - 1, largest, largest + 1, limit)}
    assert got == {largest - 1: "ok", largest: "ok", largest + 1: TOO_LARGE, limit: TOO_LARGE}
    got = {size: _outcome(lambda size=size: stubs.kv.Txn(_txn_of_size(size), timeout=10))
           for size in (largest, largest + 1)}
    assert got == {largest: "ok", largest + 1: TOO_LARGE}

    # with a credential, the header carries the user name and the auth revision
    stubs.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=10)
    stubs.auth.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)
    stubs.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    stubs.auth.AuthEnable(pb.AuthEnableRequest(), timeout=10)
    token = stubs.auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw"), timeout=10).token
    md = [("token", token)]
    revision = stubs.auth.AuthStatus(pb.AuthStatusRequest(), metadata=md, timeout=10).authRevision
    largest_root = _largest_accepted(limit, member_id, "root", revision)
    assert largest_root < largest
    got = {size: _outcome(lambda size=size: stubs.kv.Put(_put_of_size(size), metadata=md, timeout=10))
           for size in (largest_root, largest_root + 1)}
    assert got == {largest_root: "ok", largest_root + 1: TOO_LARGE}


# --------------------------------------------------------------------------- the relay process


def test_relay_process_is_started_again_and_stops_with_the_server(start) -> None:
    srv = start("etcdlite")
    kv = pb_kv(srv.channel())
    kv.Put(pb.PutRequest(key=b"k", value=b"1"), timeout=10)
    relay = [pid for pid in _processes(srv.pid) if pid != srv.pid]
    assert len(relay) == 1
    os.kill(relay[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    answer = None
    while answer is None and time.monotonic() < deadline:
        channel = grpc.insecure_channel(srv.address)
        try:
            answer = pb_kv(channel).Put(pb.PutRequest(key=b"k", value=b"2"), timeout=2)
        except grpc.RpcError:
            time.sleep(0.2)
        finally:
            channel.close()
    assert answer is not None and answer.header.revision == 3
    assert srv.log().count("the gRPC relay process ended") == 1
    relay = [pid for pid in _processes(srv.pid) if pid != srv.pid]
    assert len(relay) == 1
    assert srv.stop() == 0
    assert not _running(relay[0]), "the relay process outlived the server"


def test_relay_process_ends_when_the_server_is_killed(start) -> None:
    srv = start("etcdlite")
    relay = [pid for pid in _processes(srv.pid) if pid != srv.pid]
    srv.kill()
    deadline = time.monotonic() + 10
    while _running(relay[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(relay[0]), "the relay process outlived the killed server"


# --------------------------------------------------------------------------- the trailer rewrite


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def test_relay_rewords_cores_refusal_wherever_the_reads_split_it() -> None:
    """The Python relay loop's frame walk (the C loop's twin): core's refusal trailer, between other
    frames, reworded however the bytes arrive; any other frame passes unchanged."""
    from etcdlite.transport.relay_loop import Frames

    status = _literal(b"grpc-status", b"8")
    cores = _frame(1, 5, 3, _literal(b":status", b"200") + status +
                   _literal(b"grpc-message", b"SERVER: Received message larger than max (52428808 vs. 2097152)"))
    ours = _frame(1, 5, 3, _literal(b":status", b"200") + status +
                  _literal(b"grpc-message", b"grpc: received message larger than max (52428808 vs. 2097152)"))
    other_trailer = _frame(1, 5, 5, status + _literal(b"grpc-message", b"etcdserver: request is too large"))
    before = _frame(4, 0, 0, b"") + _frame(0, 0, 1, b"d" * 3000) + _frame(1, 4, 1, b"\x88")
    after = _frame(0, 1, 7, b"e" * 700) + other_trailer + _frame(1, 5, 9, b"x" * 600)  # too big to hold
    stream = before + cores + after
    want = before + ours + after
    for step in (1, 2, 7, 9, 10, 64, 1000, len(stream)):
        for offset in (0, 3):
            frames = Frames()
            pieces = [stream[:offset]] + [stream[i:i + step] for i in range(offset, len(stream), step)]
            assert b"".join(frames.filter(piece) for piece in pieces) == want, (step, offset)
