"""etcdserverpb.Cluster: each request is one call into ``core.cluster``."""

from __future__ import annotations

from ..core.cluster import Cluster
from ..pb.etcdserverpb import rpc_pb2 as pb
from .context import CallContext
from .credentials import CredentialsReader


class ClusterService:
    def __init__(self, cluster: Cluster, who: CredentialsReader) -> None:
        self._cluster = cluster
        self._who = who

    async def member_list(self, request: pb.MemberListRequest, context: CallContext) -> pb.MemberListResponse:
        return await self._cluster.member_list(request, self._who(context))

    async def member_add(self, request: pb.MemberAddRequest, context: CallContext) -> pb.MemberAddResponse:
        return await self._cluster.member_add(request, self._who(context))

    async def member_remove(self, request: pb.MemberRemoveRequest, context: CallContext) -> pb.MemberRemoveResponse:
        return await self._cluster.member_remove(request, self._who(context))

    async def member_update(self, request: pb.MemberUpdateRequest, context: CallContext) -> pb.MemberUpdateResponse:
        return await self._cluster.member_update(request, self._who(context))

    async def member_promote(self, request: pb.MemberPromoteRequest, context: CallContext) -> pb.MemberPromoteResponse:
        return await self._cluster.member_promote(request, self._who(context))
