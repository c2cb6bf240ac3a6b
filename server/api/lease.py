"""etcdserverpb.Lease: grant, revoke, keep-alive stream, time-to-live, list."""

from __future__ import annotations

import grpc

from .. import errors
from ..node import Node
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..request_size import RaftSizeLimit


class LeaseService:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._lessor = node.lessor
        self._size_limit = RaftSizeLimit(node.config.max_request_bytes, node.config.member_id, node.auth)

    async def lease_grant(self, request: pb.LeaseGrantRequest, context: grpc.aio.ServicerContext
                          ) -> pb.LeaseGrantResponse:
        self._node.auth.check_token(context)
        self._size_limit.check(request, context)
        self._node.check_space()
        lease, seq = self._lessor.grant(request.ID, request.TTL)
        await self._node.store.wait_durable(seq)
        resp = pb.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
        self._node.fill_header(resp.header)
        return resp

    async def lease_revoke(self, request: pb.LeaseRevokeRequest, context: grpc.aio.ServicerContext
                           ) -> pb.LeaseRevokeResponse:
        self._node.auth.check_lease_revoke(context, request)
        seq = self._lessor.revoke(request.ID)
        await self._node.store.wait_durable(seq)
        resp = pb.LeaseRevokeResponse()
        self._node.fill_header(resp.header)
        return resp

    async def lease_keep_alive(self, requests, context: grpc.aio.ServicerContext) -> None:
        async for request in requests:
            self._node.auth.check_lease_keep_alive(context, request)
            resp = pb.LeaseKeepAliveResponse(ID=request.ID)
            # header before the renew, as etcd: its revision never runs ahead of the renewal
            self._node.fill_header(resp.header)
            try:
                resp.TTL = self._lessor.renew(request.ID)
            except errors.EtcdError as exc:
                if exc is not errors.LEASE_NOT_FOUND:
                    raise
                resp.TTL = 0
            await context.write(resp)

    async def lease_time_to_live(self, request: pb.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
                                 ) -> pb.LeaseTimeToLiveResponse:
        self._node.auth.check_lease_time_to_live(context, request)
        lease = self._lessor.lookup(request.ID)
        if lease is None:
            resp = pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        else:
            resp = pb.LeaseTimeToLiveResponse(
                ID=request.ID, TTL=self._lessor.remaining_seconds(lease), grantedTTL=lease.ttl
            )
            if request.keys:
                resp.keys.extend(sorted(lease.keys))
        self._node.fill_header(resp.header)
        return resp

    async def lease_leases(self, request: pb.LeaseLeasesRequest, context: grpc.aio.ServicerContext
                           ) -> pb.LeaseLeasesResponse:
        resp = pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=le.id) for le in self._lessor.leases()])
        self._node.fill_header(resp.header)
        return resp
