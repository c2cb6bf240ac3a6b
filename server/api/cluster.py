"""etcdserverpb.Cluster: a one-member cluster, described as etcd describes itself."""

from __future__ import annotations

import grpc

from ..core.membership import Member
from ..core.server import Node
from ..pb.etcdserverpb import rpc_pb2 as pb


def _to_pb(m: Member) -> pb.Member:
    return pb.Member(ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls, isLearner=m.is_learner)


class ClusterService:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._members = node.membership

    def _header(self) -> pb.ResponseHeader:
        # etcd's ClusterServer.header(): identity and term, no revision
        node = self._node
        return pb.ResponseHeader(cluster_id=node.cluster_id, member_id=node.member_id, raft_term=node.raft_term)

    def _all(self) -> list[pb.Member]:
        return [_to_pb(m) for m in self._members.members()]

    async def member_list(self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext
                          ) -> pb.MemberListResponse:
        return pb.MemberListResponse(header=self._header(), members=self._all())

    async def member_add(self, request: pb.MemberAddRequest, context: grpc.aio.ServicerContext
                         ) -> pb.MemberAddResponse:
        self._node.auth.check_admin(context)
        member = self._members.add(list(request.peerURLs), request.isLearner)
        return pb.MemberAddResponse(header=self._header(), member=_to_pb(member), members=self._all())

    async def member_remove(self, request: pb.MemberRemoveRequest, context: grpc.aio.ServicerContext
                            ) -> pb.MemberRemoveResponse:
        self._node.auth.check_admin(context)
        self._members.remove(request.ID)
        return pb.MemberRemoveResponse(header=self._header(), members=self._all())

    async def member_update(self, request: pb.MemberUpdateRequest, context: grpc.aio.ServicerContext
                            ) -> pb.MemberUpdateResponse:
        self._node.auth.check_admin(context)
        self._members.update(request.ID, list(request.peerURLs))
        return pb.MemberUpdateResponse(header=self._header(), members=self._all())

    async def member_promote(self, request: pb.MemberPromoteRequest, context: grpc.aio.ServicerContext
                             ) -> pb.MemberPromoteResponse:
        self._node.auth.check_admin(context)
        self._members.promote(request.ID)
        return pb.MemberPromoteResponse(header=self._header(), members=self._all())
