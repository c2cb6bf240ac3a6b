"""v3electionpb.Election: etcd's election service (etcdserver/api/v3election) over concurrency.Election."""

from __future__ import annotations

import grpc

from ..core import errors
from ..core.server import Node
from ..pb.v3electionpb import v3election_pb2 as epb
from ..core.recipes import (
    ERR_MISSING_LEADER_KEY, Election, Services, as_client_error, leader, observe,
)


class ElectionService:
    def __init__(self, node: Node) -> None:
        self._services = Services(node)

    async def campaign(self, request: epb.CampaignRequest, context: grpc.aio.ServicerContext
                       ) -> epb.CampaignResponse:
        client = self._services.client(context)
        try:
            lease = await client.session_lease(request.lease)
            election = Election(client, request.name + b"/", lease)
            await election.campaign(request.value)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.CampaignResponse(
            header=election.header,
            leader=epb.LeaderKey(name=request.name, key=election.leader_key, rev=election.leader_rev, lease=lease),
        )

    async def proclaim(self, request: epb.ProclaimRequest, context: grpc.aio.ServicerContext
                       ) -> epb.ProclaimResponse:
        try:
            election = await self._resume(request, context)
            await election.proclaim(request.value)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.ProclaimResponse(header=election.header)

    async def resign(self, request: epb.ResignRequest, context: grpc.aio.ServicerContext) -> epb.ResignResponse:
        try:
            election = await self._resume(request, context)
            await election.resign()
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.ResignResponse(header=election.header)

    async def _resume(self, request: epb.ProclaimRequest | epb.ResignRequest,
                      context: grpc.aio.ServicerContext) -> Election:
        if not request.HasField("leader"):
            raise ERR_MISSING_LEADER_KEY
        client = self._services.client(context)
        lease = await client.session_lease(request.leader.lease)
        return Election.resume(client, request.leader, lease)

    async def leader(self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext) -> epb.LeaderResponse:
        try:
            resp = await leader(self._services.client(context), request.name + b"/")
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def observe(self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext) -> None:
        changes = observe(self._services.client(context), request.name + b"/")
        try:
            async for header, kv in changes:
                await context.write(epb.LeaderResponse(header=header, kv=kv))
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        finally:
            await changes.aclose()
