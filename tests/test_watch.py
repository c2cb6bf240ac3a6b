"""Watch, Lock and Election: etcdlite against real etcd, scenario by scenario.

Each differential scenario runs once against each server (started once for the
module, fresh data dirs) and records a transcript: responses with revisions
made relative to the revision the scenario started at, lease IDs replaced by
their order of appearance, and the member/cluster identity left out.  The two
transcripts must be equal.  Responses of one revision to several watchers
come in an order etcd does not fix, so a scenario drains them and sorts by
(watch id, revision) after checking each watcher's own order.

Then real clients (etcdctl watch/lock/elect), a randomized stress check
(every watcher's events equal the history its range had), and in-process checks
of the hub's slow-watcher (victim) and batched catch-up paths.
"""

from __future__ import annotations

import asyncio
import queue
import random
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from etcdlite.core import watch as hubmod
from etcdlite.core.watch import WatchHub
from etcdlite.core.watchers import WatchSpec, prefix_end
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from etcdlite.pb.v3electionpb import v3election_pb2 as epb
from etcdlite.pb.v3electionpb import v3election_pb2_grpc as erpc
from etcdlite.pb.v3lockpb import v3lock_pb2 as lpb
from etcdlite.pb.v3lockpb import v3lock_pb2_grpc as lrpc
from etcdlite.storage.memory.backend import MemoryBackend
from etcdlite.storage.memory.mvcc import MVCCStore
from harness import ETCD_BIN, ETCDCTL, EtcdProcess, etcdctl

PROGRESS_FLAG = ["--experimental-watch-progress-notify-interval=500ms"]
QUIET = 0.35  # longer than etcd's 100ms unsynced-watcher sync period, with room


# -- servers ------------------------------------------------------------------------------------
def _targets(config: pytest.Config) -> list[str]:
    """The conftest's --target choice; real etcd only when its binary is there."""
    try:
        choice = config.getoption("--target")
    except ValueError:
        choice = "both"
    targets = ["etcd", "etcdlite"] if choice == "both" else [choice]
    return [t for t in targets if t != "etcd" or ETCD_BIN is not None]


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory) -> dict[str, EtcdProcess]:
    """One server per selected target for the whole module; scenarios keep to their own keys."""
    tmp = tmp_path_factory.mktemp("watch")
    targets = _targets(request.config)
    if not targets:
        pytest.skip("no target server available")
    started: dict[str, EtcdProcess] = {}
    try:
        for target in targets:
            started[target] = EtcdProcess(target, tmp / f"{target}.data", args=PROGRESS_FLAG).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


# -- transcripts --------------------------------------------------------------------------------
_REVISION_FIELDS = {"revision", "create_revision", "mod_revision", "compact_revision", "rev"}
_LEASE_FIELDS = {"lease", "ID"}
_IDENTITY_FIELDS = {"cluster_id", "member_id", "raft_term"}


class Normalizer:
    """Revisions relative to a base; lease IDs (also inside keys, as hex) by order of appearance."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.leases: dict[int, str] = {}

    def lease(self, lease_id: int) -> str:
        if lease_id not in self.leases:
            self.leases[lease_id] = f"<lease{len(self.leases)}>"
        return self.leases[lease_id]

    def text(self, s: str) -> str:
        for lease_id, name in self.leases.items():
            s = s.replace(format(lease_id, "x"), name)
        return s

    def value(self, field: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: self.value(k, x) for k, x in sorted(v.items()) if k not in _IDENTITY_FIELDS}
        if isinstance(v, list):
            return [self.value(field, x) for x in v]
        if field in _REVISION_FIELDS:
            n = int(v)
            return n - self.base if n else 0
        if field in _LEASE_FIELDS:
            n = int(v)
            return self.lease(n) if n > 0 else n
        if field in ("key", "value") and isinstance(v, str):
            import base64

            return self.text(base64.b64decode(v).decode("latin-1"))
        return v

    def message(self, msg: Any) -> dict:
        d = MessageToDict(msg, preserving_proto_field_name=True)
        return self.value("", d)


class Transcript:
    def __init__(self, norm: Normalizer) -> None:
        self.norm = norm
        self.lines: list[Any] = []

    def add(self, label: str, msg: Any = None) -> None:
        self.lines.append((label, None if msg is None else self.norm.message(msg)))

    def note(self, label: str, value: Any) -> None:
        self.lines.append((label, value))


class WatchConn:
    """One Watch stream: requests in, responses collected by a reader task."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        self._responses: asyncio.Queue[pb.WatchResponse | BaseException] = asyncio.Queue()
        self._call = rpc.WatchStub(channel).Watch(self._feed())
        self._reader = asyncio.create_task(self._read())

    async def _feed(self):
        while (req := await self._requests.get()) is not None:
            yield req

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                await self._responses.put(resp)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            await self._responses.put(exc)

    async def send(self, req: pb.WatchRequest) -> None:
        await self._requests.put(req)

    async def create(self, key: bytes, **kw: Any) -> None:
        await self.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, **kw)))

    async def cancel(self, watch_id: int) -> None:
        await self.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    async def progress(self) -> None:
        await self.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def recv(self, timeout: float = 5.0) -> pb.WatchResponse:
        item = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def drain(self, quiet: float = QUIET) -> list[pb.WatchResponse]:
        """Everything until nothing came for ``quiet`` seconds."""
        out = []
        while True:
            try:
                out.append(await self.recv(quiet))
            except TimeoutError:
                return out

    async def close(self) -> None:
        await self._requests.put(None)
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def sorted_by_watcher(responses: list[pb.WatchResponse]) -> list[pb.WatchResponse]:
    """Check each watcher's revisions never go back, then order by (watch id, revision)."""
    last: dict[int, int] = {}
    for r in responses:
        for ev in r.events:
            assert ev.kv.mod_revision >= last.get(r.watch_id, 0), f"out of order for watch {r.watch_id}"
            last[r.watch_id] = ev.kv.mod_revision
    return sorted(responses, key=lambda r: (r.watch_id, r.events[0].kv.mod_revision if r.events else 0,
                                            r.header.revision))


class Session:
    """What a scenario gets: stubs for one server and its transcript."""

    def __init__(self, server: EtcdProcess, channel: grpc.aio.Channel, transcript: Transcript) -> None:
        self.server = server
        self.channel = channel
        self.t = transcript
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.lock = lrpc.LockStub(channel)
        self.election = erpc.ElectionStub(channel)
        self._conns: list[WatchConn] = []

    def watch_conn(self) -> WatchConn:
        conn = WatchConn(self.channel)
        self._conns.append(conn)
        return conn

    async def put(self, key: bytes, value: bytes = b"v", lease: int = 0) -> pb.PutResponse:
        return await self.kv.Put(pb.PutRequest(key=key, value=value, lease=lease))

    async def delete(self, key: bytes, range_end: bytes = b"") -> pb.DeleteRangeResponse:
        return await self.kv.DeleteRange(pb.DeleteRangeRequest(key=key, range_end=range_end))

    async def revision(self) -> int:
        return (await self.kv.Range(pb.RangeRequest(key=b"\x00"))).header.revision

    async def grant(self, ttl: int) -> int:
        lease_id = (await self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl))).ID
        self.t.norm.lease(lease_id)
        return lease_id

    async def record(self, label: str, conn: WatchConn, n: int = 1) -> None:
        for _ in range(n):
            self.t.add(label, await conn.recv())

    async def record_all(self, label: str, conn: WatchConn, quiet: float = QUIET) -> None:
        for r in sorted_by_watcher(await conn.drain(quiet)):
            self.t.add(label, r)

    async def record_quiet(self, label: str, conn: WatchConn, quiet: float = QUIET) -> None:
        got = await conn.drain(quiet)
        self.t.note(label, [self.t.norm.message(r) for r in got])

    async def record_error(self, label: str, call: Awaitable[Any]) -> Any:
        try:
            resp = await call
        except grpc.aio.AioRpcError as exc:
            self.t.note(label, (exc.code().name, exc.details()))
            return None
        self.t.add(label, resp)
        return resp

    async def close(self) -> None:
        for conn in self._conns:
            await conn.close()


Scenario = Callable[[Session], Awaitable[None]]


async def _run_scenario(server: EtcdProcess, scenario: Scenario) -> list[Any]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        base = (await rpc.KVStub(channel).Range(pb.RangeRequest(key=b"\x00"))).header.revision
        session = Session(server, channel, Transcript(Normalizer(base)))
        try:
            await asyncio.wait_for(scenario(session), 60)
        finally:
            await session.close()
        return session.t.lines


def differential(servers: dict[str, EtcdProcess], scenario: Scenario) -> list[Any]:
    """Run ``scenario`` on real etcd, then on etcdlite; their transcripts must be equal."""
    transcripts = {target: asyncio.run(_run_scenario(server, scenario)) for target, server in servers.items()}
    if len(transcripts) == 2:
        expected, actual = transcripts["etcd"], transcripts["etcdlite"]
        for i, (want, got) in enumerate(zip(expected, actual)):
            assert got == want, f"step {i} ({want[0]}) differs:\netcd:     {want}\netcdlite: {got}"
        assert len(actual) == len(expected), f"etcd: {expected[len(actual):]}\netcdlite: {actual[len(expected):]}"
    return next(iter(transcripts.values()))


# -- differential scenarios ----------------------------------------------------------------------
def test_key_prefix_and_from_key_watches(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        await w.create(b"kp/a", watch_id=1)
        await w.create(b"kp/", range_end=prefix_end(b"kp/"), watch_id=2)
        await w.create(b"kp/b", range_end=b"\x00", watch_id=3)
        await w.create(b"kp/a", range_end=b"kp/c", watch_id=4)
        await s.record("created", w, 4)
        await s.put(b"kp/a", b"1")
        await s.put(b"kp/b", b"2")
        await s.put(b"kp/c", b"3")
        await s.put(b"kq", b"outside the prefix")
        await s.delete(b"kp/a")
        await s.kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"kp/b", value=b"4")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"kp/a", value=b"5")),
        ]))
        await s.delete(b"kp/", prefix_end(b"kp/"))
        await s.delete(b"kp/zz")  # deletes nothing: no revision, no event
        await s.record_all("events", w)

    lines = differential(servers, scenario)
    assert any(label == "events" for label, _ in lines)


def test_start_revision_replays_history_then_goes_live(servers):
    async def scenario(s: Session) -> None:
        first = (await s.put(b"sr/a", b"1")).header.revision
        await s.put(b"sr/b", b"2")
        await s.put(b"sr/a", b"3")
        await s.delete(b"sr/b")
        w = s.watch_conn()
        await w.create(b"sr/", range_end=prefix_end(b"sr/"), start_revision=first)
        await s.record("created", w)
        await s.record("replay", w)
        await w.create(b"sr/a", start_revision=first + 2, watch_id=5)
        await s.record("created", w)
        await s.record("replay", w)
        await w.create(b"sr/a", start_revision=first + 100, watch_id=6)  # a future revision: waits
        await s.record("created", w)
        await s.put(b"sr/a", b"live")
        await s.record_all("live", w)

    differential(servers, scenario)


def test_filters_and_prev_kv(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        await w.create(b"fp/", range_end=prefix_end(b"fp/"), filters=[pb.WatchCreateRequest.NOPUT], watch_id=1)
        await w.create(b"fp/", range_end=prefix_end(b"fp/"), filters=[pb.WatchCreateRequest.NODELETE], watch_id=2)
        await w.create(b"fp/", range_end=prefix_end(b"fp/"), prev_kv=True, watch_id=3)
        await w.create(b"fp/", range_end=prefix_end(b"fp/"), watch_id=4, prev_kv=True,
                       filters=[pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NODELETE])
        await s.record("created", w, 4)
        start = (await s.put(b"fp/x", b"1")).header.revision
        await s.put(b"fp/x", b"2")
        await s.put(b"fp/y", b"3")
        await s.delete(b"fp/", prefix_end(b"fp/"))
        await s.put(b"fp/x", b"again")
        await s.record_all("events", w)
        await w.create(b"fp/x", start_revision=start, prev_kv=True, watch_id=9)
        await s.record("created", w)
        await s.record("replay with prev_kv", w)

    differential(servers, scenario)


def test_many_watches_on_one_stream(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        for i in range(30):
            key = b"mw/%02d" % (i % 10)
            if i % 3 == 0:
                await w.create(key, watch_id=100 + i)
            elif i % 3 == 1:
                await w.create(b"mw/", range_end=prefix_end(b"mw/"), watch_id=100 + i)
            else:
                await w.create(key, range_end=b"\x00", watch_id=100 + i, prev_kv=True)
        await s.record("created", w, 30)
        for i in range(10):
            await s.put(b"mw/%02d" % i, b"%d" % i)
        await s.delete(b"mw/03")
        await s.record_all("events", w)

    differential(servers, scenario)


def test_cancel(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        await w.create(b"cx/a", watch_id=1)
        await w.create(b"cx/a", watch_id=2)
        await s.record("created", w, 2)
        await s.put(b"cx/a")
        await s.record_all("before cancel", w)
        await w.cancel(1)
        await s.record("canceled", w)
        await w.cancel(1)  # no longer there: etcd answers nothing
        await w.cancel(77)
        await s.record_quiet("cancel unknown", w)
        await s.put(b"cx/a", b"2")
        await s.record_all("after cancel", w)
        await w.create(b"cx/a", watch_id=1)  # the id is free again
        await s.record("created again", w)
        await s.put(b"cx/a", b"3")
        await s.record_all("reused id", w)

    differential(servers, scenario)


def test_watch_ids_in_use_and_empty_range(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        await w.create(b"id/a", watch_id=1)
        await w.create(b"id/a", watch_id=1)  # in use
        await w.create(b"id/a")  # auto: 0
        await w.create(b"id/a")  # auto: 2, skipping the client's 1
        await w.create(b"id/a", watch_id=-7)
        await w.create(b"id/b", range_end=b"id/a")  # key >= range_end
        await w.create(b"id/b", range_end=b"id/b")
        await s.record("creates", w, 7)
        await w.send(pb.WatchRequest())  # no request in the union: ignored
        await s.record_quiet("empty request", w)
        await w.create(b"", watch_id=50)  # no key: watches "\0"
        await s.record("no key", w)
        await s.put(b"\x00", b"zero")
        await s.put(b"id/a", b"x")
        await s.record_all("events", w)
        await s.delete(b"\x00")
        # negative start revisions: etcd's compact revision is -1 until a compaction, so below -1 is
        # "compacted" at -1, and -1 itself reads no history (an empty range) and goes live
        await w.create(b"id/a", start_revision=-1, watch_id=60)
        await w.create(b"id/a", start_revision=-3, watch_id=61)
        await s.record_all("negative start revisions", w)
        await s.put(b"id/a", b"y")
        await s.record_all("live", w)

    differential(servers, scenario)


def test_progress_request_and_progress_notify(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        await w.progress()  # no watchers at all
        await s.record("progress, no watchers", w)
        await w.create(b"pg/a", watch_id=3)
        await s.record("created", w)
        await s.put(b"pg/a")
        await s.record("event", w)
        await w.progress()
        await s.record("progress", w)
        n = s.watch_conn()
        await n.create(b"pg/n", progress_notify=True, watch_id=4)
        await s.record("created notify", n)
        # the server's interval is 500ms (plus up to 10% jitter); the first tick may pass unnoticed
        # as etcd elides it after creation, so wait for the first notification
        resp = await n.recv(timeout=3)
        s.t.add("notification", resp)
        await s.put(b"pg/n")
        await s.record("notify event", n)

    differential(servers, scenario)


def test_watch_and_compaction(servers):
    async def scenario(s: Session) -> None:
        first = (await s.put(b"cp/a", b"1")).header.revision
        await s.put(b"cp/b", b"2")
        await s.kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"cp/a", value=b"3")),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"cp/b")),
        ]))
        compact_at = first + 2
        await s.put(b"cp/a", b"4")
        w = s.watch_conn()
        await w.create(b"cp/", range_end=prefix_end(b"cp/"), watch_id=1)
        await s.record("live watcher", w)
        await s.kv.Compact(pb.CompactionRequest(revision=compact_at))
        await s.record_quiet("compaction alone sends nothing", w)
        await w.create(b"cp/", range_end=prefix_end(b"cp/"), start_revision=first, watch_id=2)
        await s.record("created from compacted", w)
        await s.record("compacted", w)
        await w.create(b"cp/", range_end=prefix_end(b"cp/"), start_revision=compact_at, watch_id=3, prev_kv=True)
        await s.record("created at the compact revision", w)
        await s.record("replay from the compact revision", w)
        await w.create(b"cp/", range_end=prefix_end(b"cp/"), watch_id=2)  # the compacted id is still taken
        await s.record("compacted id in use", w)
        await w.cancel(2)
        await s.record("cancel a compacted watcher", w)
        await s.put(b"cp/b", b"5")
        await s.record_all("live after compaction", w)

    differential(servers, scenario)


def test_lease_revoke_and_expiry_deletes(servers):
    async def scenario(s: Session) -> None:
        w = s.watch_conn()
        await w.create(b"ls/", range_end=prefix_end(b"ls/"), prev_kv=True)
        await s.record("created", w)
        revoked = await s.grant(60)
        await s.put(b"ls/r2", b"x", lease=revoked)
        await s.put(b"ls/r1", b"y", lease=revoked)
        await s.record("puts", w, 2)
        await s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=revoked))
        await s.record("revoke deletes", w)
        expiring = await s.grant(1)
        await s.put(b"ls/e1", b"z", lease=expiring)
        await s.put(b"ls/e2", b"z", lease=expiring)
        await s.record("puts", w, 2)
        resp = await w.recv(timeout=8)
        s.t.add("expiry deletes", resp)

    differential(servers, scenario)


def test_fragmented_responses(servers):
    async def scenario(s: Session) -> None:
        big = b"x" * (800 * 1024)
        first = (await s.put(b"fr/a", big)).header.revision
        await s.put(b"fr/b", big)
        await s.put(b"fr/c", big)
        for fragment in (True, False):
            w = s.watch_conn()
            await w.create(b"fr/", range_end=prefix_end(b"fr/"), start_revision=first, fragment=fragment)
            await s.record("created", w)
            for r in await w.drain():
                s.t.note("response", (r.fragment, [e.kv.key for e in r.events], r.ByteSize() > 2 * 1024 * 1024))
            await w.close()

    differential(servers, scenario)


def test_lock_service(servers):
    async def scenario(s: Session) -> None:
        lease1 = await s.grant(60)
        lease2 = await s.grant(60)
        first = await s.record_error("lock", s.lock.Lock(lpb.LockRequest(name=b"lk", lease=lease1)))
        again = await s.record_error("lock again, same lease", s.lock.Lock(lpb.LockRequest(name=b"lk", lease=lease1)))
        assert again.key == first.key
        waiting = asyncio.ensure_future(s.lock.Lock(lpb.LockRequest(name=b"lk", lease=lease2)))
        await asyncio.sleep(0.3)
        s.t.note("second waits", waiting.done())
        await s.record_error("unlock", s.lock.Unlock(lpb.UnlockRequest(key=first.key)))
        s.t.add("second holds", await asyncio.wait_for(waiting, 5))
        # a waiter that gives up takes its key away
        lease3 = await s.grant(60)
        gives_up = s.lock.Lock(lpb.LockRequest(name=b"lk", lease=lease3))
        await asyncio.sleep(0.3)
        gives_up.cancel()
        await asyncio.sleep(0.3)
        keys = await s.kv.Range(pb.RangeRequest(key=b"lk/", range_end=prefix_end(b"lk/"), keys_only=True))
        s.t.note("keys after a waiter gave up", [s.t.norm.text(kv.key.decode()) for kv in keys.kvs])
        await s.record_error("bad lease", s.lock.Lock(lpb.LockRequest(name=b"lk2", lease=12345)))
        await s.record_error("unlock no key", s.lock.Unlock(lpb.UnlockRequest()))
        fresh = await s.lock.Lock(lpb.LockRequest(name=b"lk3"))  # no lease: a fresh 60s one
        ttl = await s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=int(fresh.key.split(b"/")[1], 16)))
        s.t.note("fresh lease ttl", ttl.grantedTTL)

    differential(servers, scenario)


def test_election_service(servers):
    async def scenario(s: Session) -> None:
        lease1 = await s.grant(60)
        lease2 = await s.grant(60)
        await s.record_error("no leader", s.election.Leader(epb.LeaderRequest(name=b"el")))
        observer = s.election.Observe(epb.LeaderRequest(name=b"el"))
        first = await s.record_error("campaign", s.election.Campaign(
            epb.CampaignRequest(name=b"el", lease=lease1, value=b"one")))
        s.t.add("observed", await observer.read())
        await s.record_error("leader", s.election.Leader(epb.LeaderRequest(name=b"el")))
        second = asyncio.ensure_future(s.election.Campaign(epb.CampaignRequest(name=b"el", lease=lease2, value=b"two")))
        await asyncio.sleep(0.3)
        s.t.note("second waits", second.done())
        await s.record_error("proclaim", s.election.Proclaim(epb.ProclaimRequest(leader=first.leader, value=b"uno")))
        s.t.add("observed proclaim", await observer.read())
        stale = epb.LeaderKey(name=b"el", key=first.leader.key, rev=first.leader.rev + 1, lease=lease1)
        await s.record_error("proclaim stale", s.election.Proclaim(epb.ProclaimRequest(leader=stale, value=b"x")))
        await s.record_error("proclaim no leader", s.election.Proclaim(epb.ProclaimRequest(value=b"x")))
        await s.record_error("resign", s.election.Resign(epb.ResignRequest(leader=first.leader)))
        s.t.add("second elected", await asyncio.wait_for(second, 5))
        s.t.add("observed new leader", await observer.read())
        await s.record_error("campaign again, same lease", s.election.Campaign(
            epb.CampaignRequest(name=b"el", lease=lease2, value=b"changed")))
        s.t.add("observed", await observer.read())
        observer.cancel()
        await s.record_error("resign no leader", s.election.Resign(epb.ResignRequest()))
        await s.record_error("bad lease", s.election.Campaign(epb.CampaignRequest(name=b"el2", lease=99, value=b"v")))

    differential(servers, scenario)


# -- real clients: etcdctl --------------------------------------------------------------------------
def _etcdctl(server: EtcdProcess, *args: str) -> str:
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed")
    rc, out, err = etcdctl(server.endpoint, *args)
    assert rc == 0, err
    return out


class Background:
    """An etcdctl left running; a thread collects its output lines (it flushes per line)."""

    def __init__(self, server: EtcdProcess, *args: str) -> None:
        if ETCDCTL is None:
            pytest.skip("etcdctl is not installed")
        self.proc = subprocess.Popen([ETCDCTL, f"--endpoints={server.endpoint}", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def lines(self, n: int, timeout: float = 10) -> list[str]:
        """Up to ``n`` more lines, waiting at most ``timeout`` in all."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)
                break
            out.append(line)
        return out

    def kill(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(5)


def _revision(server: EtcdProcess) -> int:
    out = _etcdctl(server, "get", "x", "-w", "json")
    return int(re.search(r'"revision":(\d+)', out).group(1))


def _both(servers: dict[str, EtcdProcess], run: Callable[[EtcdProcess], Any]) -> Any:
    results = {target: run(server) for target, server in servers.items()}
    if len(results) == 2:
        assert results["etcdlite"] == results["etcd"], f"\netcd:     {results['etcd']}\netcdlite: {results['etcdlite']}"
    return next(iter(results.values()))


def test_etcdctl_watch_key_prefix_rev_prev_kv(servers):
    def run(server: EtcdProcess) -> list[list[str]]:
        base = _revision(server)
        watches = [
            (Background(server, "watch", "ew/a"), 9),
            (Background(server, "watch", "--prefix", "ew/"), 12),
            (Background(server, "watch", "--prev-kv", "ew/a"), 13),
        ]
        time.sleep(1.0)
        _etcdctl(server, "put", "ew/a", "1")
        _etcdctl(server, "put", "ew/b", "2")
        _etcdctl(server, "put", "ew/a", "3")
        _etcdctl(server, "del", "ew/a")
        out = []
        for proc, n in watches:
            out.append(proc.lines(n) + proc.lines(1, timeout=0.2))
            proc.kill()
        replay = Background(server, "watch", "--prefix", "--rev", str(base + 2), "ew/")
        out.append(replay.lines(9) + replay.lines(1, timeout=0.3))
        replay.kill()
        return out

    lines = _both(servers, run)
    assert lines[0] == ["PUT", "ew/a", "1", "PUT", "ew/a", "3", "DELETE", "ew/a", ""]
    assert lines[3][:3] == ["PUT", "ew/b", "2"]


def test_etcdctl_watch_exec_command(servers):
    def run(server: EtcdProcess) -> list[str]:
        base = _revision(server)
        cmd = f'echo "$ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE $((ETCD_WATCH_REVISION - {base}))"'
        proc = Background(server, "watch", "--prefix", "ex/", "--", "sh", "-c", cmd)
        time.sleep(1.0)
        _etcdctl(server, "put", "ex/k", "hello")
        _etcdctl(server, "del", "ex/k")
        lines = proc.lines(8)
        proc.kill()
        return lines

    assert _both(servers, run) == ["PUT", "ex/k", "hello", '"PUT" "ex/k" "hello" 1',
                                   "DELETE", "ex/k", "", '"DELETE" "ex/k" "" 2']


def _hide_lease(lines: list[str]) -> list[str]:
    return [re.sub(r"/[0-9a-f]+$", "/<lease>", line) for line in lines]


def test_etcdctl_lock_two_contenders(servers):
    def run(server: EtcdProcess) -> list[str]:
        holder = Background(server, "lock", "el-lock")
        first = holder.lines(1)
        contender = Background(server, "lock", "el-lock", "--", "sh", "-c", "echo got it")
        waited = contender.lines(1, timeout=1.0)
        holder.kill()  # etcdctl unlocks on SIGTERM
        after = contender.lines(1)
        contender.proc.wait(10)
        contender.kill()
        return [*_hide_lease(first), f"waited: {waited}", *after, f"exit {contender.proc.returncode}"]

    assert _both(servers, run) == ["el-lock/<lease>", "waited: []", "got it", "exit 0"]


def test_etcdctl_elect_campaign_and_observe(servers):
    def run(server: EtcdProcess) -> list[str]:
        observer = Background(server, "elect", "-l", "el-e")
        time.sleep(0.5)
        leader = Background(server, "elect", "el-e", "first")
        led = leader.lines(2)
        challenger = Background(server, "elect", "el-e", "second")
        waited = challenger.lines(1, timeout=1.0)
        leader.kill()  # etcdctl resigns on SIGTERM
        won = challenger.lines(2)
        seen = observer.lines(4)
        for proc in (challenger, observer):
            proc.kill()
        return [*_hide_lease(led), f"waited: {waited}", *_hide_lease(won), "observed:", *_hide_lease(seen)]

    assert _both(servers, run) == ["el-e/<lease>", "first", "waited: []", "el-e/<lease>", "second", "observed:",
                                   "el-e/<lease>", "first", "el-e/<lease>", "second"]


# -- randomized: every watcher sees exactly its range's history ------------------------------------
@dataclass
class _Watch:
    key: bytes
    end: bytes | None  # None: one key; b"": from key
    start: int  # first revision it must see
    slow: bool
    events: list[tuple[int, bytes, str, bytes]]

    def holds(self, key: bytes) -> bool:
        if self.end is None:
            return key == self.key
        return self.key <= key and (self.end == b"" or key < self.end)


async def _stress(server: EtcdProcess, seed: int) -> None:
    rng = random.Random(seed)
    keys = [b"rs/%d" % i for i in range(12)]
    history: list[tuple[int, bytes, str, bytes]] = []
    watches: list[_Watch] = []
    done = asyncio.Event()

    async with grpc.aio.insecure_channel(server.address, options=[("grpc.max_receive_message_length", -1)]) as ch:
        kv = rpc.KVStub(ch)
        base = (await kv.Range(pb.RangeRequest(key=b"\x00"))).header.revision

        async def writer(n: int) -> None:
            for _ in range(n):
                key = rng.choice(keys)
                r = rng.random()
                if r < 0.6:
                    value = rng.randbytes(rng.choice((8, 2000, 20000)))
                    resp = await kv.Put(pb.PutRequest(key=key, value=value))
                    history.append((resp.header.revision, key, "PUT", value))
                elif r < 0.85:
                    resp = await kv.DeleteRange(pb.DeleteRangeRequest(key=key))
                    if resp.deleted:
                        history.append((resp.header.revision, key, "DELETE", b""))
                else:
                    a, b = sorted(rng.sample(keys, 2))
                    va, vb = rng.randbytes(16), rng.randbytes(16)
                    resp = await kv.Txn(pb.TxnRequest(success=[
                        pb.RequestOp(request_put=pb.PutRequest(key=a, value=va)),
                        pb.RequestOp(request_put=pb.PutRequest(key=b, value=vb)),
                    ]))
                    history.extend([(resp.header.revision, a, "PUT", va), (resp.header.revision, b, "PUT", vb)])

        async def watcher(spec: _Watch) -> None:
            conn = WatchConn(ch)
            end = b"\x00" if spec.end == b"" else (spec.end or b"")
            await conn.create(spec.key, range_end=end, start_revision=max(spec.start, 0))
            created = await conn.recv()
            assert created.created and not created.canceled
            if spec.start == 0:
                spec.start = created.header.revision + 1
            received = 0
            try:
                while True:
                    try:
                        resp = await conn.recv(timeout=0.5)
                    except TimeoutError:
                        if done.is_set():
                            return
                        continue
                    for ev in resp.events:
                        kind = "DELETE" if ev.type == ev.DELETE else "PUT"
                        spec.events.append((ev.kv.mod_revision, ev.kv.key, kind, ev.kv.value))
                    received += 1
                    if spec.slow and received == 1:
                        await asyncio.sleep(1.0)  # let the server's queue for this stream fill up
            finally:
                await conn.close()

        def new_watch(slow: bool, start: int) -> _Watch:
            a, b = sorted(rng.sample(keys, 2))
            if slow:  # everything: enough responses to fill its stream's queue while it sleeps
                return _Watch(b"rs/", b"", start, slow, [])
            shape = rng.choice(("key", "prefix", "range", "from"))
            if shape == "key":
                return _Watch(a, None, start, slow, [])
            if shape == "prefix":
                return _Watch(b"rs/1", prefix_end(b"rs/1"), start, slow, [])
            if shape == "range":
                return _Watch(a, b, start, slow, [])
            return _Watch(a, b"", start, slow, [])

        tasks = []
        for i in range(24):
            spec = new_watch(slow=i % 6 == 0, start=rng.choice((0, base + 1)))
            watches.append(spec)
            tasks.append(asyncio.create_task(watcher(spec)))
        writers = [asyncio.create_task(writer(150)) for _ in range(4)]
        await asyncio.sleep(0.2)
        for i in range(8):  # late watchers: live, or replaying from the start while writes go on
            spec = new_watch(slow=i % 4 == 0, start=rng.choice((0, base + 1)))
            watches.append(spec)
            tasks.append(asyncio.create_task(watcher(spec)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*writers)
        final = (await kv.Range(pb.RangeRequest(key=b"\x00"))).header.revision
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(not w.events or w.events[-1][0] >= _last_rev(history, w, final) for w in watches):
                break
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.gather(*tasks)

    history.sort(key=lambda e: e[0])  # writers append concurrently; revisions are the truth
    for w in watches:
        want = [e for e in history if e[0] >= w.start and w.holds(e[1])]
        got = w.events
        # events of one revision come in the order they were written (txn puts: our sorted a, b)
        assert [e[0] for e in got] == sorted(e[0] for e in got), f"{w}: out of order"
        assert sorted(got) == sorted(want), f"watch {w.key!r}..{w.end!r} from {w.start}: missing or repeated"


def _last_rev(history: list[tuple[int, bytes, str, bytes]], w: _Watch, final: int) -> int:
    revs = [e[0] for e in history if e[0] >= w.start and w.holds(e[1])]
    return max(revs) if revs else 0


def test_randomized_writers_and_watchers(servers):
    for server in servers.values():  # real etcd too: it validates the check itself
        asyncio.run(asyncio.wait_for(_stress(server, seed=1234), 60))


# -- in-process: the hub's slow-watcher and catch-up paths ---------------------------------------
def _put(store: MVCCStore, key: bytes, value: bytes) -> int:
    txn = store.write_txn()
    txn.put(key, value, 0)
    txn.end()
    return txn.revision


def test_hub_slow_stream_becomes_victim_then_catches_up():
    async def run() -> None:
        backend = MemoryBackend(None)
        store = backend.store
        hub = WatchHub(backend)
        hub.start()
        stream = hub.new_stream(capacity=2)
        w = stream.create(WatchSpec(key=b"a"))
        revs = [_put(store, b"a", b"%d" % i) for i in range(10)]  # nobody reads: queue full after 2
        assert hub.stats()["victims"] == 1
        seen: list[int] = []
        deadline = time.monotonic() + 5
        while len(seen) < 10 and time.monotonic() < deadline:
            resp = await asyncio.wait_for(stream.next(), 2)
            seen.extend(kv.mod_revision for kv in resp.events)
        assert seen == revs  # in order, nothing lost or repeated
        assert w.state is hubmod.State.SYNCED and hub.stats()["victims"] == 0
        hub.close()
        await hub.wait_closed()
        with pytest.raises(hubmod.StreamClosed):
            await stream.next()

    asyncio.run(run())


def test_hub_catch_up_in_bounded_batches(monkeypatch):
    monkeypatch.setattr(hubmod, "WATCH_BATCH_MAX_REVS", 3)
    monkeypatch.setattr(hubmod, "MAX_REVS_SCANNED_PER_SYNC", 5)

    async def run() -> None:
        backend = MemoryBackend(None)
        store = backend.store
        hub = WatchHub(backend)
        hub.start()
        revs = [_put(store, b"k%d" % (i % 2), b"v") for i in range(20)]
        stream = hub.new_stream()
        stream.create(WatchSpec(key=b"k0", start_revision=revs[0]))
        stream.create(WatchSpec(key=b"k", end=b"", start_revision=revs[4]))
        got: dict[int, list[int]] = {0: [], 1: []}
        sizes = []
        while len(got[0]) < 10 or len(got[1]) < 16:
            resp = await asyncio.wait_for(stream.next(), 2)
            if resp.events:
                sizes.append(len({kv.mod_revision for kv in resp.events}))
                got[resp.watch_id].extend(kv.mod_revision for kv in resp.events)
        assert got[0] == revs[0::2]
        assert got[1] == revs[4:]
        assert max(sizes) <= 3
        live = _put(store, b"k0", b"live")
        resp = await asyncio.wait_for(stream.next(), 2)
        assert [kv.mod_revision for kv in resp.events] == [live]
        hub.close()
        await hub.wait_closed()

    asyncio.run(run())


def test_hub_compaction_cancels_a_lagging_watcher():
    async def run() -> None:
        backend = MemoryBackend(None)
        store = backend.store
        hub = WatchHub(backend)
        revs = [_put(store, b"a", b"%d" % i) for i in range(5)]
        store.compact(revs[3])
        stream = hub.new_stream()
        stream.create(WatchSpec(key=b"a", start_revision=revs[1]))
        hub.start()
        created = await stream.next()
        compacted = await asyncio.wait_for(stream.next(), 2)
        assert created.created and compacted.compact_revision == revs[3] and compacted.canceled
        hub.close()
        await hub.wait_closed()

    asyncio.run(run())


def test_hub_randomized_tiny_queues(monkeypatch):
    """Many watchers on queues of 1-4 responses, slow readers, writers that never wait for them."""
    monkeypatch.setattr(hubmod, "WATCH_BATCH_MAX_REVS", 4)
    monkeypatch.setattr(hubmod, "MAX_REVS_SCANNED_PER_SYNC", 9)
    monkeypatch.setattr(hubmod, "MAX_WATCHERS_PER_SYNC", 3)
    rng = random.Random(7)
    keys = [b"k%d" % i for i in range(8)]

    async def run() -> None:
        backend = MemoryBackend(None)
        store = backend.store
        hub = WatchHub(backend)
        hub.start()
        victims_seen = 0
        watchers: list[tuple[hubmod.Watcher, int, list]] = []  # (watcher, first revision it needs, events)
        writing = True

        def write() -> None:
            txn = store.write_txn()
            for key in rng.sample(keys, rng.choice((1, 1, 2, 3))):
                if rng.random() < 0.7:
                    txn.put(key, rng.randbytes(4), 0)
                else:
                    txn.delete_range(key, None)
            txn.end()

        async def writer() -> None:
            nonlocal victims_seen
            for _ in range(300):
                write()
                victims_seen = max(victims_seen, hub.stats()["victims"])
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

        async def reader(stream: hubmod.WatchStream, out: list) -> None:
            while True:
                try:
                    resp = await stream.next()
                except hubmod.StreamClosed:
                    return
                if resp.events:
                    assert len({kv.mod_revision for kv in resp.events}) <= 4
                    out.extend((kv.mod_revision, kv.key, kv.value, kv.version) for kv in resp.events)
                if rng.random() < 0.2:
                    await asyncio.sleep(rng.random() / 100)

        def new_watch() -> None:
            stream = hub.new_stream(capacity=rng.randint(1, 4))
            a, b = sorted(rng.sample(keys, 2))
            spec = rng.choice([WatchSpec(key=a), WatchSpec(key=a, end=b), WatchSpec(key=a, end=b""),
                               WatchSpec(key=b"k", end=prefix_end(b"k"))])
            start = rng.choice((0, 1, max(1, store.visible_revision - rng.randint(0, 20))))
            spec = WatchSpec(key=spec.key, end=spec.end, start_revision=start)
            first = start or store.visible_revision + 1
            w = stream.create(spec)
            out: list = []
            watchers.append((w, first, out))
            readers.append(asyncio.create_task(reader(stream, out)))

        readers: list[asyncio.Task] = []
        for _ in range(10):
            new_watch()
        tasks = [asyncio.create_task(writer()) for _ in range(3)]
        for _ in range(20):
            await asyncio.sleep(0.001)
            new_watch()
        await asyncio.gather(*tasks)
        writing = False
        history = list(store.changes_since(1, store.visible_revision))
        deadline = time.monotonic() + 10
        expected = {}
        for w, first, _ in watchers:
            expected[w] = [(kv.mod_revision, kv.key, kv.value, kv.version) for rev, changes in history
                           if rev >= first for kv in changes if w.contains(kv.key)]
        while time.monotonic() < deadline and any(len(out) < len(expected[w]) for w, _, out in watchers):
            await asyncio.sleep(0.01)
        hub.close()
        await hub.wait_closed()
        await asyncio.gather(*readers)
        assert not writing
        assert victims_seen > 0, "the slow paths were not exercised"
        for w, _, out in watchers:
            assert out == expected[w], f"{w}: missing, repeated or out of order"

    asyncio.run(run())
