"""etcdserverpb.Maintenance: Status, Alarm, Defragment and Snapshot over the data dir (issue 4).

Defragment rewrites the snapshot and starts an empty log, so the data dir shrinks to what is in
use.  Snapshot streams a fresh etcdlite snapshot file (see ``server.wal``) in 32 KiB chunks and then
its SHA-256, as etcd's v3rpc does with its bbolt file: ``etcdctl snapshot save`` stores it and
``etcdlite snapshot restore FILE --data-dir DIR`` turns it back into a data dir.
"""

from __future__ import annotations

import hashlib
import logging

import grpc
from crc32c import crc32c

from .. import errors
from ..version import CLUSTER_VERSION, SERVER_VERSION
from ..alarm import describe
from ..downgrade import UNKNOWN_METHOD, Downgrade
from ..node import Node
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..wal import WAL, snapshot_revision, snapshot_size

log = logging.getLogger("etcdlite.maintenance")

SNAPSHOT_CHUNK = 32 * 1024  # etcd's snapshotSendBufferSize


class MaintenanceService:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._in_use: tuple[tuple[int, int, int], int] = ((-1, -1, -1), 0)  # (state it was computed for, size)
        self._downgrade = Downgrade(CLUSTER_VERSION)

    async def status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        node = self._node
        wal = node.wal
        index = node.raft_index
        size = node.db_size()
        in_use = self._size_in_use()
        resp = pb.StatusResponse(
            version=SERVER_VERSION, dbSize=size, dbSizeInUse=min(in_use, size) if size else in_use,
            leader=node.member_id, raftIndex=index, raftTerm=node.raft_term, raftAppliedIndex=index,
            isLearner=False)
        resp.errors.extend(describe(alarm) for alarm in node.alarms.get())
        if wal is not None and wal.failure is not None:
            resp.errors.append(wal.failure.message)
        node.fill_header(resp.header)
        return resp

    def _size_in_use(self) -> int:
        """What a snapshot would take now; walking the history is O(versions), so it is kept per state."""
        node = self._node
        state = (node.store.current_revision, node.store.compact_revision, len(node.lessor.leases()))
        if state != self._in_use[0]:
            self._in_use = (state, snapshot_size(node.store, node.lessor))
        return self._in_use[1]

    async def alarm(self, request: pb.AlarmRequest, context: grpc.aio.ServicerContext) -> pb.AlarmResponse:
        self._node.auth.check_alarm(context, request)
        alarms = self._node.alarms
        resp = pb.AlarmResponse()
        if request.action == pb.AlarmRequest.GET:
            resp.alarms.extend(alarms.get(request.alarm))
        else:
            if request.action == pb.AlarmRequest.ACTIVATE:
                changed = alarms.activate(request.memberID, request.alarm)
            else:
                changed = alarms.deactivate(request.memberID, request.alarm)
            if changed is not None:
                resp.alarms.append(changed)
        self._node.fill_header(resp.header)
        return resp

    async def defragment(self, request: pb.DefragmentRequest, context: grpc.aio.ServicerContext
                         ) -> pb.DefragmentResponse:
        self._node.auth.check_maintenance_admin(context)
        wal = self._wal()
        log.info("starting defragment", extra={"fields": {"db-size-bytes": wal.disk_size()}})
        await wal.snapshot()
        log.info("finished defragment", extra={"fields": {"db-size-bytes": wal.disk_size()}})
        return pb.DefragmentResponse()  # etcd answers without a header

    async def snapshot(self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext) -> None:
        self._node.auth.check_maintenance_admin(context)
        data = await self._wal().snapshot()
        total = len(data)
        log.info("sending database snapshot to client", extra={"fields": {"total-bytes": total}})
        digest = hashlib.sha256()
        header = pb.ResponseHeader(revision=snapshot_revision(data))
        self._node.fill_header(header)
        sent = 0
        while sent < total:
            blob = data[sent:sent + SNAPSHOT_CHUNK]
            sent += len(blob)
            digest.update(blob)
            resp = pb.SnapshotResponse(remaining_bytes=total - sent, blob=blob)
            if sent == len(blob):
                resp.header.CopyFrom(header)  # the first header marks the snapshot's point in time
            await context.write(resp)
        await context.write(pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest()))
        log.info("sent database snapshot to client", extra={"fields": {"total-bytes": total}})

    async def hash(self, request: pb.HashRequest, context: grpc.aio.ServicerContext) -> pb.HashResponse:
        """etcd hashes its whole bbolt file; etcdlite hashes what it stores: every version and lease."""
        self._node.auth.check_maintenance_admin(context)
        store = self._node.store
        kv_hash, current = store.hash_kv(0) if store.compact_main_revision < store.current_revision \
            else (0, store.current_revision)
        leases = b"".join(le.id.to_bytes(8, "big") + le.ttl.to_bytes(8, "big")
                          for le in sorted(self._node.lessor.leases(), key=lambda le: le.id))
        resp = pb.HashResponse(hash=crc32c(leases, kv_hash))
        resp.header.revision = current
        self._node.fill_header(resp.header)
        return resp

    async def hash_k_v(self, request: pb.HashKVRequest, context: grpc.aio.ServicerContext) -> pb.HashKVResponse:
        self._node.auth.check_maintenance_admin(context)
        store = self._node.store
        h, current = store.hash_kv(request.revision)
        resp = pb.HashKVResponse(hash=h, compact_revision=store.compact_main_revision)
        resp.header.revision = current
        self._node.fill_header(resp.header)
        return resp

    async def move_leader(self, request: pb.MoveLeaderRequest, context: grpc.aio.ServicerContext
                          ) -> pb.MoveLeaderResponse:
        self._node.auth.check_admin(context)
        node = self._node
        target = next((m for m in node.membership.members() if m.id == request.targetID), None)
        if target is None or target.is_learner:
            raise errors.BAD_LEADER_TRANSFEREE
        if target.id != node.member_id:
            raise errors.TIMEOUT  # an added member never starts, so it never catches up to take over
        return pb.MoveLeaderResponse()  # etcd answers without a header

    async def downgrade(self, request: pb.DowngradeRequest, context: grpc.aio.ServicerContext
                        ) -> pb.DowngradeResponse:
        self._node.auth.check_admin(context)
        job = self._downgrade
        if request.action == pb.DowngradeRequest.VALIDATE:
            job.validate(request.version)
        elif request.action == pb.DowngradeRequest.ENABLE:
            job.enable(request.version)
            log.info("downgrade enabled", extra={"fields": {"target-version": request.version}})
        elif request.action == pb.DowngradeRequest.CANCEL:
            job.cancel()
            log.info("downgrade cancelled")
        else:
            raise UNKNOWN_METHOD
        resp = pb.DowngradeResponse(version=CLUSTER_VERSION)
        self._node.fill_header(resp.header)
        return resp

    def _wal(self) -> WAL:
        if self._node.wal is None:
            raise errors.STOPPED
        return self._node.wal
