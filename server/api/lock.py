"""v3lockpb.Lock: etcd's lock service (etcdserver/api/v3lock), a Mutex per Lock call."""

from __future__ import annotations

import grpc

from ..core import errors
from ..core.server import Node
from ..pb.v3lockpb import v3lock_pb2 as lpb
from ..core.recipes import Services, as_client_error, lock


class LockService:
    def __init__(self, node: Node) -> None:
        self._services = Services(node)

    async def lock(self, request: lpb.LockRequest, context: grpc.aio.ServicerContext) -> lpb.LockResponse:
        """Hold the lock ``name`` on ``lease`` (a fresh 60s lease when 0), waiting behind older holders."""
        try:
            header, key = await lock(self._services.client(context), request.name, request.lease)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return lpb.LockResponse(header=header, key=key)

    async def unlock(self, request: lpb.UnlockRequest, context: grpc.aio.ServicerContext) -> lpb.UnlockResponse:
        try:
            resp = await self._services.client(context).delete(request.key)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return lpb.UnlockResponse(header=resp.header)
