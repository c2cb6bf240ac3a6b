"""v3lockpb.Lock: etcd's lock service (etcdserver/api/v3lock), a Mutex per Lock call."""

from __future__ import annotations

from .. import errors
from ..core.recipes import LocalClient, as_client_error, lock
from ..core.server import Core
from ..pb.v3lockpb import v3lock_pb2 as lpb
from .context import CallContext
from .credentials import CredentialsReader


class LockService:
    def __init__(self, core: Core, who: CredentialsReader) -> None:
        self._core = core
        self._who = who

    def _client(self, context: CallContext) -> LocalClient:
        return LocalClient(self._core, self._who(context))

    async def lock(self, request: lpb.LockRequest, context: CallContext) -> lpb.LockResponse:
        """Hold the lock ``name`` on ``lease`` (a fresh 60s lease when 0), waiting behind older holders."""
        try:
            header, key = await lock(self._client(context), request.name, request.lease)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return lpb.LockResponse(header=header, key=key)

    async def unlock(self, request: lpb.UnlockRequest, context: CallContext) -> lpb.UnlockResponse:
        try:
            resp = await self._client(context).delete(request.key)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return lpb.UnlockResponse(header=resp.header)
