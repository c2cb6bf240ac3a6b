"""The gRPC engine (``server/transport/engine.py``) and the client-port splice (``server/transport/splice.py``).

Everything else in the suite runs through them too; these tests cover what it would not reach:
the engine on an event loop other than its own (the helper thread then carries every event),
big messages in both directions through the splice with many connections at once, a client that
cancels a waiting call and a streaming one, and a stop with calls still open.
"""

from __future__ import annotations

import asyncio
import hashlib
import selectors
import socket
import threading
from pathlib import Path

import grpc
import pytest

from etcdlite.app import EtcdServer
from etcdlite.config import from_args
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from etcdlite.pb.v3lockpb import v3lock_pb2 as lpb
from etcdlite.pb.v3lockpb import v3lock_pb2_grpc as lrpc
from etcdlite.transport import engine, splice
from harness import EtcdProcess, free_port


async def _exercise(endpoint: str) -> list[object]:
    """Unary, server-waiting, bidi and cancelled calls; returns what they answered."""
    seen: list[object] = []
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv, lease, watch = rpc.KVStub(channel), rpc.LeaseStub(channel), rpc.WatchStub(channel)
        await kv.Put(pb.PutRequest(key=b"k", value=b"v1"))
        seen.append((await kv.Range(pb.RangeRequest(key=b"k"))).kvs[0].value)

        stream = watch.Watch()
        await stream.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k")))
        seen.append((await stream.read()).created)
        await kv.Put(pb.PutRequest(key=b"k", value=b"v2"))
        event = (await stream.read()).events[0]
        seen.append((event.type, event.kv.value))
        stream.cancel()

        granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))
        keep = lease.LeaseKeepAlive()
        for _ in range(3):
            await keep.write(pb.LeaseKeepAliveRequest(ID=granted.ID))
            seen.append((await keep.read()).TTL)
        keep.cancel()

        # a unary call that waits in the server (a lock held by someone else), given up by its client
        lock = lrpc.LockStub(channel)
        held = await lock.Lock(lpb.LockRequest(name=b"l", lease=granted.ID))
        other = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30))
        waiting = asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"l", lease=other.ID)))
        await asyncio.sleep(0.3)
        waiting.cancel()
        await asyncio.sleep(0.3)
        keys = await kv.Range(pb.RangeRequest(key=b"l/", range_end=b"l0", keys_only=True))
        seen.append([k.key == held.key for k in keys.kvs])
        try:
            await kv.Range(pb.RangeRequest(key=b""))
        except grpc.aio.AioRpcError as exc:
            seen.append((exc.code(), exc.details()))
    return seen


EXPECTED = [b"v1", True, (0, b"v2"), 30, 30, 30, [True],
            (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")]


@pytest.mark.parametrize("loop_factory", [engine.new_event_loop, asyncio.new_event_loop],
                         ids=["engine-loop", "plain-asyncio-loop"])
def test_engine_serves_on_its_loop_and_on_any_other(tmp_path: Path, loop_factory) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg, _ = from_args(["--data-dir", str(tmp_path / "data"), "--listen-client-urls", url,
                        "--advertise-client-urls", url, "--client-http-mux=false"], environ={})

    async def main() -> list[object]:
        server = EtcdServer(cfg)
        await server.start()
        try:
            return await asyncio.wait_for(_exercise(f"127.0.0.1:{port}"), 30)
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(main()) == EXPECTED


class _QueueWatcher:
    """Stands in for an engine on a ``CompletionQueueSelector``: records the loop's waits on the queue alone."""

    wake_fd = -1
    helper_polling = False

    def __init__(self) -> None:
        self.brief_waits = 0

    def serve_ready(self) -> int:
        return 0

    def serve_next(self, seconds: float) -> bool:
        self.brief_waits += 1
        return False

    def helper_watch(self, wanted: bool) -> None:
        pass


def test_no_brief_wait_on_the_queue_alone_while_an_answer_is_awaited(monkeypatch) -> None:
    """A descriptor just registered for reading (a database query in flight: psycopg registers its socket
    for each answer it waits for) makes the loop sleep on every descriptor at once, not first up to
    1 ms on gRPC's queue alone; once it was ready, or after AWAITED_SECONDS, the brief wait is back."""
    selector = engine.CompletionQueueSelector()
    watcher = _QueueWatcher()
    selector.engines.append(watcher)  # type: ignore[arg-type]
    ours, database = socket.socketpair()
    try:
        selector.register(ours, selectors.EVENT_READ)  # a query was sent: its answer is awaited
        assert selector.select(0.01) == [] and watcher.brief_waits == 0
        assert selector.select(0.01) == [] and watcher.brief_waits == 0  # still awaited
        database.send(b"answer")
        assert [key.fileobj for key, _ in selector.select(0.01)] == [ours]
        ours.recv(16)
        selector.select(0.01)  # (the last select saw a descriptor ready: no brief wait after it)
        selector.select(0.01)
        assert watcher.brief_waits == 1  # answered: nothing awaited any more
        selector.unregister(ours)
        selector.register(ours, selectors.EVENT_READ)
        watcher.helper_polling = True  # the helper thread waits on the queue: the loop must not as well
        monkeypatch.setattr(engine, "AWAITED_SECONDS", 0.0)  # and a registration this old waits for anything
        selector.select(0.01)
        assert watcher.brief_waits == 1
        watcher.helper_polling = False
        selector.select(0.01)
        assert watcher.brief_waits == 2
    finally:
        selector.close()
        ours.close()
        database.close()


def test_the_loop_leaves_the_queue_to_the_helper_while_it_polls() -> None:
    """Two pollers of one completion queue make each zero-timeout poll cost ~70 µs: while the helper
    thread waits on the queue, ``serve_ready`` takes only what it handed over."""
    eng = engine.GrpcEngine({}, [])
    polls: list[float] = []

    class Queue:
        def poll(self, deadline: float) -> object:
            polls.append(deadline)
            raise AssertionError("polled while the helper polls")

    real_cq, eng._cq = eng._cq, Queue()  # type: ignore[assignment]
    served: list[object] = []
    eng._dispatch = served.append  # type: ignore[method-assign]
    eng._handoff.append("event")
    eng.helper_polling = True
    try:
        assert eng.serve_ready() == 1 and served == ["event"] and polls == []
    finally:
        eng._cq = real_cq


def test_stop_with_open_streams_and_waiting_calls(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    stop = threading.Event()

    def hold_open() -> None:
        async def run() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
                stream = rpc.WatchStub(channel).Watch()
                await stream.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w")))
                await stream.read()
                lease = await rpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=30))
                lock = lrpc.LockStub(channel)
                await lock.Lock(lpb.LockRequest(name=b"l", lease=lease.ID))
                blocked = asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"l")))
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                blocked.cancel()
        asyncio.run(run())

    client = threading.Thread(target=hold_open)
    client.start()
    try:
        import time
        time.sleep(1.0)
        started = time.monotonic()
        srv.proc.terminate()
        assert srv.proc.wait(10) == 0
        # the waiting Lock call is cancelled after the 1 s grace; nothing else holds the stop up
        assert time.monotonic() - started < 3.0
    finally:
        stop.set()
        client.join(10)
        srv.stop()


RELAY_FORMS = {"program": None, "c-module": {"ETCDLITE_RELAY_MODULE": "1"}, "python": {"ETCDLITE_PY_SPLICE": "1"}}


def _relay_argv(server_pid: int) -> list[str]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1] for pid in children][0]


@pytest.mark.parametrize("form", list(RELAY_FORMS))
def test_big_messages_through_the_client_port_relay(tmp_path: Path, form: str) -> None:
    """Default flags: gRPC reaches the server through the mux's relay process, in each of its forms (the
    C loop as a program of its own, the default where a compiler built it; the same loop as an extension
    module in a bare interpreter; the Python loop used where nothing was built). 1 MiB values both ways
    on 8 connections at once, while HTTP/1.1 is served on the same port."""
    if form != "python" and splice.relay_program() is None:
        pytest.skip("the C relay loop was not built here (no compiler when installing)")
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--unsafe-no-fsync"], env=RELAY_FORMS[form]).start()
    try:
        assert srv.proc is not None
        argv = _relay_argv(srv.proc.pid)
        if form == "program":  # no interpreter in the relay process
            assert Path(argv[0]).name == "etcdlite-relay", argv
        else:
            assert argv[1:4] == ["-I", "-S", "-c"] and argv[-4] == ("_splice" if form == "c-module" else "relay_loop")
        async def one(i: int) -> bool:
            value = hashlib.sha256(str(i).encode()).digest() * (1 << 15)  # 1 MiB
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
                kv = rpc.KVStub(channel)
                for round_ in range(3):
                    await kv.Put(pb.PutRequest(key=b"big/%d/%d" % (i, round_), value=value))
                got = await kv.Range(pb.RangeRequest(key=b"big/%d/" % i, range_end=b"big/%d0" % i))
                return [kv_.value for kv_ in got.kvs] == [value] * 3

        async def http_health() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = await reader.read()
            writer.close()
            return body

        async def main() -> tuple[list[bool], bytes]:
            results = await asyncio.gather(*(one(i) for i in range(8)), http_health())
            return list(results[:8]), results[8]

        ok, health = asyncio.run(main())
        assert ok == [True] * 8
        assert health.startswith(b"HTTP/1.1 200") and b'"health":"true"' in health
    finally:
        srv.stop()


def test_cancellations_and_deadlines_under_load_leave_the_server_healthy(tmp_path: Path) -> None:
    """400 calls at once, many given up mid-flight (deadlines shorter than a log sync, streams cancelled
    before or after their first answer): every failure is the client's own DEADLINE_EXCEEDED/CANCELLED,
    the server answers normally afterwards, logs no error and stops cleanly."""
    import random

    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    try:
        async def main() -> bytes:
            rng = random.Random(7)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
                kv, watch, lease = rpc.KVStub(channel), rpc.WatchStub(channel), rpc.LeaseStub(channel)

                async def one(i: int) -> None:
                    try:
                        if i % 4 == 0:
                            await kv.Put(pb.PutRequest(key=b"c/%d" % i, value=b"x"),
                                         timeout=rng.choice([0.0005, 0.002, 10]))
                        elif i % 4 == 1:
                            await kv.Range(pb.RangeRequest(key=b"c/", range_end=b"c0"),
                                           timeout=rng.choice([0.0005, 10]))
                        elif i % 4 == 2:
                            stream = watch.Watch()
                            await stream.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"c/")))
                            if rng.random() < 0.5:
                                await stream.read()
                            stream.cancel()
                        else:
                            granted = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=5))
                            keep = lease.LeaseKeepAlive()
                            await keep.write(pb.LeaseKeepAliveRequest(ID=granted.ID))
                            if rng.random() < 0.5:
                                await keep.read()
                            keep.cancel()
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), exc

                await asyncio.gather(*(one(i) for i in range(400)))
                await kv.Put(pb.PutRequest(key=b"after", value=b"ok"))
                return (await kv.Range(pb.RangeRequest(key=b"after"))).kvs[0].value

        assert asyncio.run(main()) == b"ok"
        assert srv.stop(timeout=10) == 0
        log = srv.log()
        assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
    finally:
        srv.stop()


def test_the_relay_program_refuses_a_wrong_command_line() -> None:
    """etcdlite-relay is started by the server only; by hand it says how, and never runs half-set-up."""
    import subprocess

    program = splice.relay_program()
    if program is None:
        pytest.skip("the C relay loop was not built here (no compiler when installing)")
    for argv in ([], ["x", "name"], ["3"], ["-1", "name"]):
        done = subprocess.run([program, *argv], capture_output=True, text=True, timeout=10)
        assert done.returncode == 2, (argv, done)
        assert "etcdlite-relay" in done.stderr
    done = subprocess.run([program, "1000", "name"], capture_output=True, text=True, timeout=10)  # not open
    assert done.returncode == 1 and "etcdlite-relay" in done.stderr, done
