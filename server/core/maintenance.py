"""Maintenance: Status, Alarm, Defragment, Snapshot, Hash, HashKV, MoveLeader, Downgrade (issue 4, 7)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from crc32c import crc32c

from .. import errors
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..version import CLUSTER_VERSION, SERVER_VERSION
from .alarm import describe
from .downgrade import UNKNOWN_METHOD, Downgrade
from .server import Core, Who

if TYPE_CHECKING:
    from . import snapshot

log = logging.getLogger("etcdlite.maintenance")


class Maintenance:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._downgrade = Downgrade(CLUSTER_VERSION)

    async def status(self, request: pb.StatusRequest, who: Who) -> pb.StatusResponse:
        core = self._core
        backend = core.backend
        index = core.raft_index
        size = backend.size()
        in_use = backend.size_in_use()
        resp = pb.StatusResponse(
            version=SERVER_VERSION, dbSize=size, dbSizeInUse=min(in_use, size) if size else in_use,
            leader=backend.leader_id or core.member_id, raftIndex=index, raftTerm=core.raft_term, raftAppliedIndex=index,
            isLearner=False)
        resp.errors.extend(describe(alarm) for alarm in core.alarms.get())
        failure = backend.failure
        if failure is not None:
            resp.errors.append(failure.message if isinstance(failure, errors.EtcdError) else str(failure))
        core.fill_header(resp.header)
        return resp

    async def alarm(self, request: pb.AlarmRequest, who: Who) -> pb.AlarmResponse:
        core = self._core
        core.auth.check_alarm(who, request)
        alarms = core.alarms
        resp = pb.AlarmResponse()
        if request.action == pb.AlarmRequest.GET:
            resp.alarms.extend(alarms.get(request.alarm))
        elif request.action in (pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE):
            if request.action == pb.AlarmRequest.ACTIVATE:
                changed = alarms.activate(request.memberID, request.alarm)  # an unknown type: INVALID_ARGUMENT
            else:
                changed = alarms.deactivate(request.memberID, request.alarm)
            if changed is not None:
                resp.alarms.append(changed)
            await core.backend.wait_applied()  # a shared backend commits the change with its log
        else:  # etcd 3.5.1 dies of a nil response here
            raise errors.EtcdError(errors.Code.INVALID_ARGUMENT, f"etcdserver: unknown alarm action {request.action}")
        core.fill_header(resp.header)
        return resp

    async def defragment(self, request: pb.DefragmentRequest, who: Who) -> pb.DefragmentResponse:
        backend = self._core.backend
        self._core.auth.check_maintenance_admin(who)
        log.info("starting defragment", extra={"fields": {"db-size-bytes": backend.size()}})
        await backend.defragment()
        log.info("finished defragment", extra={"fields": {"db-size-bytes": backend.size()}})
        return pb.DefragmentResponse()  # etcd answers without a header

    async def snapshot(self, who: Who) -> snapshot.SnapshotFile:
        """The database as etcd's bbolt file and the header that marks its point in time; the caller
        streams the file and closes it."""
        self._core.auth.check_maintenance_admin(who)
        from .snapshot import take  # bbolt's writer, loaded by the first snapshot (idle RSS)

        return await take(self._core)

    async def hash(self, request: pb.HashRequest, who: Who) -> pb.HashResponse:
        """etcd hashes its whole bbolt file; etcdlite hashes what it stores: every version and lease."""
        core = self._core
        core.auth.check_maintenance_admin(who)
        backend = core.backend
        kv_hash, current = backend.hash_kv(0) if backend.compact_main_revision < backend.current_revision \
            else (0, backend.current_revision)
        leases = b"".join(lease_id.to_bytes(8, "big") + ttl.to_bytes(8, "big")
                          for lease_id, ttl in sorted(backend.leases().items()))
        resp = pb.HashResponse(hash=crc32c(leases, kv_hash))
        resp.header.revision = current
        core.fill_header(resp.header)
        return resp

    async def hash_k_v(self, request: pb.HashKVRequest, who: Who) -> pb.HashKVResponse:
        core = self._core
        core.auth.check_maintenance_admin(who)
        backend = core.backend
        h, current = backend.hash_kv(request.revision)
        resp = pb.HashKVResponse(hash=h, compact_revision=backend.compact_main_revision)
        resp.header.revision = current
        core.fill_header(resp.header)
        return resp

    async def move_leader(self, request: pb.MoveLeaderRequest, who: Who) -> pb.MoveLeaderResponse:
        core = self._core
        core.auth.check_admin(who)
        leader = core.backend.leader_id
        if leader and leader != core.member_id:
            raise errors.NOT_LEADER  # only the leader hands leadership over, as in etcd
        await core.membership.refresh()
        target = next((m for m in core.membership.members() if m.id == request.targetID), None)
        if target is None or target.is_learner:
            raise errors.BAD_LEADER_TRANSFEREE
        if target.id != core.member_id:
            log.info("leadership transfer starting", extra={"fields": {
                "local-member-id": f"{core.member_id:x}", "current-leader-member-id": f"{core.member_id:x}",
                "transferee-member-id": f"{target.id:x}"}})
            await core.backend.transfer_leadership(target.id)
            log.info("leadership transfer finished", extra={"fields": {
                "local-member-id": f"{core.member_id:x}", "old-leader-member-id": f"{core.member_id:x}",
                "new-leader-member-id": f"{target.id:x}"}})
        return pb.MoveLeaderResponse()  # etcd answers without a header

    async def downgrade(self, request: pb.DowngradeRequest, who: Who) -> pb.DowngradeResponse:
        self._core.auth.check_admin(who)
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
        self._core.fill_header(resp.header)
        return resp
