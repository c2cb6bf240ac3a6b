"""etcdserverpb.Cluster: a one-member cluster, described as etcd describes itself."""

from __future__ import annotations

import grpc

from ..node import Node
from ..pb.etcdserverpb import rpc_pb2 as pb


class ClusterService:
    def __init__(self, node: Node) -> None:
        self._node = node

    def _header(self) -> pb.ResponseHeader:
        # etcd's ClusterServer.header(): identity and term, no revision
        node = self._node
        return pb.ResponseHeader(cluster_id=node.cluster_id, member_id=node.member_id, raft_term=node.raft_term)

    def _self(self) -> pb.Member:
        cfg = self._node.config
        return pb.Member(ID=self._node.member_id, name=cfg.name, peerURLs=cfg.peer_urls,
                         clientURLs=cfg.advertise_client_urls)

    async def member_list(self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext
                          ) -> pb.MemberListResponse:
        return pb.MemberListResponse(header=self._header(), members=[self._self()])
