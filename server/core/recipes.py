"""etcd's clientv3/concurrency recipes, run inside the server (what v3lock and v3election use).

etcd serves Lock and Election by running its client recipes against an
in-process client (v3client); here ``LocalClient`` calls core's KV and Lease
pipeline directly and watches through the hub, so every step has exactly the
checks, revisions and durability waits a client would see.  Errors reach the
client as etcd's do: an etcd error's message under code UNKNOWN (the
in-process client's error type carries no gRPC status).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..pb.mvccpb import kv_pb2
from ..pb.v3electionpb import v3election_pb2 as epb
from .kv import to_pb
from .ranges import EncodedResponse
from .server import Core, Who
from .watchers import StreamClosed, WatchResponse, WatchSpec, prefix_end

DEFAULT_SESSION_TTL = 60  # concurrency.defaultSessionTTL
NO_LEASE = 0

_UNKNOWN = errors.Code.UNKNOWN
ERR_ELECTION_NOT_LEADER = errors.EtcdError(_UNKNOWN, "election: not leader")
ERR_ELECTION_NO_LEADER = errors.EtcdError(_UNKNOWN, "election: no leader")
ERR_MISSING_LEADER_KEY = errors.EtcdError(_UNKNOWN, '"leader" field must be provided')
ERR_LOST_WATCHER = errors.EtcdError(_UNKNOWN, "lost watcher waiting for delete")

Compare = pb.Compare
RangeRequest = pb.RangeRequest


def as_client_error(exc: errors.EtcdError) -> errors.EtcdError:
    """An etcd error as etcd's lock/election services return it: same message, code UNKNOWN."""
    if exc.code == _UNKNOWN:
        return exc
    return errors.EtcdError(_UNKNOWN, exc.message)


def lease_key(prefix: bytes, lease: int) -> bytes:
    """``fmt.Sprintf("%s%x", pfx, leaseID)``."""
    return prefix + format(lease, "x").encode()


def _prefix_range(prefix: bytes, **kwargs: Any) -> pb.RangeRequest:
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix) or b"\x00", **kwargs)


def first_create(prefix: bytes) -> pb.RangeRequest:
    """clientv3.WithFirstCreate: the oldest key under ``prefix``."""
    return _prefix_range(prefix, sort_target=RangeRequest.CREATE, sort_order=RangeRequest.ASCEND, limit=1)


def last_create(prefix: bytes, max_create_revision: int) -> pb.RangeRequest:
    """clientv3.WithLastCreate + WithMaxCreateRev: the newest key under ``prefix`` created by then."""
    return _prefix_range(prefix, sort_target=RangeRequest.CREATE, sort_order=RangeRequest.DESCEND, limit=1,
                         max_create_revision=max_create_revision)


def create_revision_is(key: bytes, revision: int) -> pb.Compare:
    return pb.Compare(key=key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=revision)


def op_put(key: bytes, value: bytes, lease: int) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def op_get(r: pb.RangeRequest) -> pb.RequestOp:
    return pb.RequestOp(request_range=r)


def op_delete(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


class LocalWatch:
    """An in-process watch (a clientv3 watch channel): responses until a delete, compaction or close."""

    def __init__(self, core: Core, spec: WatchSpec) -> None:
        self._stream = core.watches.new_stream()
        self._stream.create(spec)
        self.compacted = False

    async def __aenter__(self) -> LocalWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stream.close()

    async def next(self) -> WatchResponse | None:
        """The next event response; None once the watch was canceled by compaction (``compacted``)."""
        while True:
            try:
                resp = await self._stream.next()
            except StreamClosed:
                raise errors.STOPPED from None
            if resp.created:
                if resp.canceled:
                    raise errors.EtcdError(_UNKNOWN, resp.cancel_reason)
                continue
            if resp.compact_revision:
                self.compacted = True
                return None
            if resp.events:
                return resp


class LocalClient:
    """etcd's v3client: the server's own services, called in-process with the caller's credentials."""

    def __init__(self, core: Core, who: Who) -> None:
        self.core = core
        self._who = who  # as etcd passes the request's context on: same user, same permissions

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        return await self.core.txn(r, self._who)

    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        resp = await self.core.range(r, self._who)
        return resp.message() if isinstance(resp, EncodedResponse) else resp

    async def delete(self, key: bytes) -> pb.DeleteRangeResponse:
        return await self.core.delete_range(pb.DeleteRangeRequest(key=key), self._who)

    def delete_now(self, key: bytes) -> None:
        """A delete that must happen even while the caller is being canceled: applied, not awaited."""
        request = pb.DeleteRangeRequest(key=key)
        self.core.backend.write_nowait(lambda txn: self.core.kv.delete_range(txn, request))

    def txn_now(self, r: pb.TxnRequest) -> None:
        self.core.backend.write_nowait(lambda txn: self.core.kv.txn(txn, r))

    async def session_lease(self, lease: int) -> int:
        """concurrency.NewSession(WithLease(lease)) then Orphan(): no lease given means a fresh 60s one."""
        if lease != NO_LEASE:
            return lease
        resp = await self.core.lease_grant(pb.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL), self._who)
        return resp.ID

    def watch(self, key: bytes, end: bytes | None, start_revision: int) -> LocalWatch:
        return LocalWatch(self.core, WatchSpec(key=key, end=end, start_revision=start_revision))

    def header(self, revision: int) -> pb.ResponseHeader:
        core = self.core
        return pb.ResponseHeader(cluster_id=core.cluster_id, member_id=core.member_id,
                                 raft_term=core.raft_term, revision=revision)

    # -- clientv3/concurrency/key.go ----------------------------------------------------
    async def wait_delete(self, key: bytes, revision: int) -> None:
        async with self.watch(key, None, revision) as watch:
            while (resp := await watch.next()) is not None:
                if any(kv.is_tombstone for kv in resp.events):
                    return
            if watch.compacted:
                raise as_client_error(errors.COMPACTED)
        raise ERR_LOST_WATCHER

    async def wait_deletes(self, prefix: bytes, max_create_revision: int) -> pb.ResponseHeader:
        """Until no key under ``prefix`` created at or before ``max_create_revision`` is left."""
        while True:
            resp = await self.range(last_create(prefix, max_create_revision))
            if not resp.kvs:
                return resp.header
            await self.wait_delete(resp.kvs[0].key, resp.header.revision)


async def lock(client: LocalClient, name: bytes, lease: int) -> tuple[pb.ResponseHeader, bytes]:
    """concurrency.Mutex.Lock: queue a key under name/ and wait for every older one to go."""
    lease = await client.session_lease(lease)
    prefix = name + b"/"
    my_key = lease_key(prefix, lease)
    owner = op_get(first_create(prefix))
    resp = await client.txn(pb.TxnRequest(
        compare=[create_revision_is(my_key, 0)],
        success=[op_put(my_key, b"", lease), owner],
        failure=[op_get(pb.RangeRequest(key=my_key)), owner],
    ))
    my_rev = resp.header.revision
    if not resp.succeeded:
        my_rev = resp.responses[0].response_range.kvs[0].create_revision
    holder = resp.responses[1].response_range.kvs
    if not holder or holder[0].create_revision == my_rev:
        return resp.header, my_key
    try:
        header = await client.wait_deletes(prefix, my_rev - 1)
    except BaseException:
        client.delete_now(my_key)  # Mutex.Lock releases its key when the wait fails
        raise
    return header, my_key


@dataclass
class Election:
    """concurrency.Election: a leader key under name/, ordered by create revision."""

    client: LocalClient
    prefix: bytes
    lease: int
    leader_key: bytes = b""
    leader_rev: int = 0
    is_leader: bool = False  # Go's leaderSession != nil
    header: pb.ResponseHeader | None = None

    @classmethod
    def resume(cls, client: LocalClient, leader: epb.LeaderKey, lease: int) -> Election:
        """concurrency.ResumeElection from a LeaderKey."""
        return cls(client, leader.name, lease, leader.key, leader.rev, True)

    async def campaign(self, value: bytes) -> None:
        client = self.client
        key = lease_key(self.prefix, self.lease)
        resp = await client.txn(pb.TxnRequest(
            compare=[create_revision_is(key, 0)],
            success=[op_put(key, value, self.lease)],
            failure=[op_get(pb.RangeRequest(key=key))],
        ))
        self.leader_key, self.leader_rev, self.is_leader = key, resp.header.revision, True
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            self.leader_rev = kv.create_revision
            if kv.value != value:
                try:
                    await self.proclaim(value)
                except errors.EtcdError:
                    await self._resign_quietly()
                    raise
        try:
            await client.wait_deletes(self.prefix, self.leader_rev - 1)
        except asyncio.CancelledError:
            self._resign_now()  # the campaigner went away: step down
            raise
        except BaseException:
            self.is_leader = False
            raise
        self.header = resp.header

    async def proclaim(self, value: bytes) -> None:
        if not self.is_leader:
            raise ERR_ELECTION_NOT_LEADER
        resp = await self.client.txn(pb.TxnRequest(
            compare=[create_revision_is(self.leader_key, self.leader_rev)],
            success=[op_put(self.leader_key, value, self.lease)],
        ))
        if not resp.succeeded:
            self.leader_key = b""
            raise ERR_ELECTION_NOT_LEADER
        self.header = resp.header

    def _resign_txn(self) -> pb.TxnRequest:
        return pb.TxnRequest(compare=[create_revision_is(self.leader_key, self.leader_rev)],
                             success=[op_delete(self.leader_key)])

    async def resign(self) -> None:
        if not self.is_leader:
            return
        try:
            resp = await self.client.txn(self._resign_txn())
            self.header = resp.header
        finally:
            self.leader_key = b""
            self.is_leader = False

    async def _resign_quietly(self) -> None:
        with contextlib.suppress(errors.EtcdError):
            await self.resign()

    def _resign_now(self) -> None:
        if self.is_leader:
            with contextlib.suppress(errors.EtcdError):
                self.client.txn_now(self._resign_txn())
            self.leader_key = b""
            self.is_leader = False


async def leader(client: LocalClient, prefix: bytes) -> pb.RangeResponse:
    """concurrency.Election.Leader: the oldest key under the prefix."""
    resp = await client.range(first_create(prefix))
    if not resp.kvs:
        raise ERR_ELECTION_NO_LEADER
    return resp


async def observe(client: LocalClient, prefix: bytes) -> AsyncIterator[tuple[pb.ResponseHeader, kv_pb2.KeyValue]]:
    """concurrency.Election.Observe: the leader now, then each change of its value, then the next leader."""
    while True:
        try:
            resp = await client.range(first_create(prefix))
        except errors.EtcdError:
            return
        if resp.kvs:
            header, kv = resp.header, resp.kvs[0]
        else:
            found = await _first_put(client, prefix, resp.header.revision)
            if found is None:
                return
            header, kv = found
        yield header, kv
        async with client.watch(kv.key, None, header.revision + 1) as watch:
            deleted = False
            while not deleted and (wr := await watch.next()) is not None:
                for event in wr.events:
                    if event.is_tombstone:
                        deleted = True
                        break
                    yield client.header(wr.revision), to_pb(event)
            if not deleted:
                return


async def _first_put(client: LocalClient, prefix: bytes, revision: int
                     ) -> tuple[pb.ResponseHeader, kv_pb2.KeyValue] | None:
    """Wait for the first put under the prefix; its header revision is the put's."""
    async with client.watch(prefix, prefix_end(prefix) or b"", revision) as watch:
        while (resp := await watch.next()) is not None:
            for kv in resp.events:
                if not kv.is_tombstone:
                    return client.header(kv.mod_revision), to_pb(kv)
    return None
