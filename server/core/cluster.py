"""Cluster: a one-member cluster's membership requests, answered as etcd answers them."""

from __future__ import annotations

from ..pb.etcdserverpb import rpc_pb2 as pb
from .membership import Member
from .server import Core, Who


def _to_pb(m: Member) -> pb.Member:
    return pb.Member(ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls, isLearner=m.is_learner)


class Cluster:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._members = core.membership

    def _header(self) -> pb.ResponseHeader:
        # etcd's ClusterServer.header(): identity and term, no revision
        core = self._core
        return pb.ResponseHeader(cluster_id=core.cluster_id, member_id=core.member_id, raft_term=core.raft_term)

    def _all(self) -> list[pb.Member]:
        return [_to_pb(m) for m in self._members.members()]

    async def member_list(self, request: pb.MemberListRequest, who: Who) -> pb.MemberListResponse:
        await self._members.refresh()
        return pb.MemberListResponse(header=self._header(), members=self._all())

    async def member_add(self, request: pb.MemberAddRequest, who: Who) -> pb.MemberAddResponse:
        self._core.auth.check_admin(who)
        member = self._members.add(list(request.peerURLs), request.isLearner)
        return pb.MemberAddResponse(header=self._header(), member=_to_pb(member), members=self._all())

    async def member_remove(self, request: pb.MemberRemoveRequest, who: Who) -> pb.MemberRemoveResponse:
        self._core.auth.check_admin(who)
        await self._members.refresh()
        self._members.remove(request.ID)
        return pb.MemberRemoveResponse(header=self._header(), members=self._all())

    async def member_update(self, request: pb.MemberUpdateRequest, who: Who) -> pb.MemberUpdateResponse:
        self._core.auth.check_admin(who)
        self._members.update(request.ID, list(request.peerURLs))
        return pb.MemberUpdateResponse(header=self._header(), members=self._all())

    async def member_promote(self, request: pb.MemberPromoteRequest, who: Who) -> pb.MemberPromoteResponse:
        self._core.auth.check_admin(who)
        self._members.promote(request.ID)
        return pb.MemberPromoteResponse(header=self._header(), members=self._all())
