"""v3electionpb.Election: etcd's election service (etcdserver/api/v3election) over concurrency.Election."""

from __future__ import annotations

from .. import errors
from ..core.recipes import (
    ERR_MISSING_LEADER_KEY,
    Election,
    LocalClient,
    as_client_error,
    leader,
    observe,
)
from ..core.server import Core
from ..pb.v3electionpb import v3election_pb2 as epb
from .context import CallContext
from .credentials import CredentialsReader


class ElectionService:
    def __init__(self, core: Core, who: CredentialsReader) -> None:
        self._core = core
        self._who = who

    def _client(self, context: CallContext) -> LocalClient:
        return LocalClient(self._core, self._who(context))

    async def campaign(self, request: epb.CampaignRequest, context: CallContext
                       ) -> epb.CampaignResponse:
        client = self._client(context)
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

    async def proclaim(self, request: epb.ProclaimRequest, context: CallContext
                       ) -> epb.ProclaimResponse:
        try:
            election = await self._resume(request, context)
            await election.proclaim(request.value)
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.ProclaimResponse(header=election.header)

    async def resign(self, request: epb.ResignRequest, context: CallContext) -> epb.ResignResponse:
        try:
            election = await self._resume(request, context)
            await election.resign()
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.ResignResponse(header=election.header)

    async def _resume(self, request: epb.ProclaimRequest | epb.ResignRequest,
                      context: CallContext) -> Election:
        if not request.HasField("leader"):
            raise ERR_MISSING_LEADER_KEY
        client = self._client(context)
        lease = await client.session_lease(request.leader.lease)
        return Election.resume(client, request.leader, lease)

    async def leader(self, request: epb.LeaderRequest, context: CallContext) -> epb.LeaderResponse:
        try:
            resp = await leader(self._client(context), request.name + b"/")
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        return epb.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def observe(self, request: epb.LeaderRequest, context: CallContext) -> None:
        changes = observe(self._client(context), request.name + b"/")
        try:
            async for header, kv in changes:
                await context.write(epb.LeaderResponse(header=header, kv=kv))
        except errors.EtcdError as exc:
            raise as_client_error(exc) from None
        finally:
            await changes.aclose()
