"""etcdserverpb.Maintenance: each request is one call into ``core.maintenance``; Snapshot streams the
bbolt file core wrote (``core.snapshot``) in 32 KiB chunks and then its SHA-256, as etcd's v3rpc does:
``etcdctl snapshot save`` stores it, ``etcdutl snapshot status|restore`` read it, and so does
``etcdlite snapshot restore FILE --data-dir DIR``."""

from __future__ import annotations

import hashlib
import logging

from .. import errors
from ..core.maintenance import Maintenance
from ..pb.etcdserverpb import rpc_pb2 as pb
from .context import CallContext
from .credentials import CredentialsReader

log = logging.getLogger("etcdlite.maintenance")

SNAPSHOT_CHUNK = 32 * 1024  # etcd's snapshotSendBufferSize


class MaintenanceService:
    def __init__(self, maintenance: Maintenance, who: CredentialsReader) -> None:
        self._maintenance = maintenance
        self._who = who

    async def status(self, request: pb.StatusRequest, context: CallContext) -> pb.StatusResponse:
        return await self._maintenance.status(request, self._who(context))

    async def alarm(self, request: pb.AlarmRequest, context: CallContext) -> pb.AlarmResponse:
        return await self._maintenance.alarm(request, self._who(context))

    async def defragment(self, request: pb.DefragmentRequest, context: CallContext) -> pb.DefragmentResponse:
        return await self._maintenance.defragment(request, self._who(context))

    async def hash(self, request: pb.HashRequest, context: CallContext) -> pb.HashResponse:
        return await self._maintenance.hash(request, self._who(context))

    async def hash_k_v(self, request: pb.HashKVRequest, context: CallContext) -> pb.HashKVResponse:
        return await self._maintenance.hash_k_v(request, self._who(context))

    async def move_leader(self, request: pb.MoveLeaderRequest, context: CallContext) -> pb.MoveLeaderResponse:
        return await self._maintenance.move_leader(request, self._who(context))

    async def downgrade(self, request: pb.DowngradeRequest, context: CallContext) -> pb.DowngradeResponse:
        return await self._maintenance.downgrade(request, self._who(context))

    async def snapshot(self, request: pb.SnapshotRequest, context: CallContext) -> None:
        snap = await self._maintenance.snapshot(self._who(context))
        with snap.file as f:
            total = snap.size
            log.info("sending database snapshot to client", extra={"fields": {"total-bytes": total}})
            digest = hashlib.sha256()
            sent = 0
            while sent < total:
                blob = f.read(min(SNAPSHOT_CHUNK, total - sent))
                if not blob:
                    raise errors.EtcdError(errors.Code.INTERNAL, "etcdserver: snapshot file ended early")
                sent += len(blob)
                digest.update(blob)
                resp = pb.SnapshotResponse(remaining_bytes=total - sent, blob=blob)
                if sent == len(blob):
                    resp.header.CopyFrom(snap.header)  # the first header marks the snapshot's point in time
                await context.write(resp)
        await context.write(pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest()))
        log.info("sent database snapshot to client", extra={"fields": {"total-bytes": total}})
