"""etcdserverpb.Lease: grant, revoke, the keep-alive stream, time-to-live, list."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..core.server import Core
from ..pb.etcdserverpb import rpc_pb2 as pb
from .context import CallContext
from .credentials import CredentialsReader


class LeaseService:
    def __init__(self, core: Core, who: CredentialsReader) -> None:
        self._core = core
        self._who = who

    async def lease_grant(self, request: pb.LeaseGrantRequest, context: CallContext) -> pb.LeaseGrantResponse:
        return await self._core.lease_grant(request, self._who(context))

    async def lease_revoke(self, request: pb.LeaseRevokeRequest, context: CallContext) -> pb.LeaseRevokeResponse:
        return await self._core.lease_revoke(request, self._who(context))

    async def lease_keep_alive(self, requests: AsyncIterator[pb.LeaseKeepAliveRequest], context: CallContext
                               ) -> None:
        who = self._who(context)
        keep_alive = self._core.lease_keep_alive
        async for request in requests:
            await context.write(await keep_alive(request, who))

    async def lease_keep_alive_each(self, request: pb.LeaseKeepAliveRequest, context: CallContext
                                    ) -> pb.LeaseKeepAliveResponse:
        """One message of the keep-alive stream, as the gRPC engine serves it (see rpc.PerMessage)."""
        return await self._core.lease_keep_alive(request, self._who(context))

    async def lease_time_to_live(self, request: pb.LeaseTimeToLiveRequest, context: CallContext
                                 ) -> pb.LeaseTimeToLiveResponse:
        return await self._core.lease_time_to_live(request, self._who(context))

    async def lease_leases(self, request: pb.LeaseLeasesRequest, context: CallContext) -> pb.LeaseLeasesResponse:
        return await self._core.lease_leases(request, self._who(context))
