"""etcdserverpb.KV: convert, check size, apply, wait for durability, answer."""

from __future__ import annotations

import grpc

from .. import kv
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..node import Node
from ..request_size import RaftSizeLimit


class KVService:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._kv = node.kv
        self._size_limit = RaftSizeLimit(node.config.max_request_bytes, node.config.member_id, node.auth)
        self._max_txn_ops = node.config.max_txn_ops

    def _check_size(self, request, context: grpc.aio.ServicerContext) -> None:
        self._size_limit.check(request, context)

    async def range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext) -> pb.RangeResponse:
        kv.check_range(request)
        self._node.auth.check_range(context, request)
        resp = self._kv.range(request)
        self._node.fill_header(resp.header)
        return resp

    async def put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        kv.check_put(request)
        self._node.auth.check_put(context, request)
        self._check_size(request, context)
        self._node.check_space()
        resp, seq = self._kv.put(request)
        await self._node.store.wait_durable(seq)
        self._node.fill_header(resp.header)
        return resp

    async def delete_range(self, request: pb.DeleteRangeRequest, context: grpc.aio.ServicerContext
                           ) -> pb.DeleteRangeResponse:
        kv.check_delete(request)
        self._node.auth.check_delete_range(context, request)
        self._check_size(request, context)
        resp, seq = self._kv.delete_range(request)
        await self._node.store.wait_durable(seq)
        self._node.fill_header(resp.header)
        return resp

    async def txn(self, request: pb.TxnRequest, context: grpc.aio.ServicerContext) -> pb.TxnResponse:
        kv.check_txn(request, self._max_txn_ops)
        self._node.auth.check_txn(context, request)
        if not kv.is_read_only(request):  # etcd serves read-only txns without raft, so unchecked
            self._check_size(request, context)
        if _has_put(request):
            self._node.check_space()
        resp, seq = self._kv.txn(request)
        await self._node.store.wait_durable(seq)
        self._node.fill_header(resp.header)
        return resp

    async def compact(self, request: pb.CompactionRequest, context: grpc.aio.ServicerContext
                      ) -> pb.CompactionResponse:
        self._node.auth.check_token(context)  # etcd checks no permission for a compaction
        resp, seq = self._kv.compact(request)
        await self._node.store.wait_durable(seq)
        self._node.fill_header(resp.header)
        return resp


def _has_put(r: pb.TxnRequest) -> bool:
    for op in (*r.success, *r.failure):
        which = op.WhichOneof("request")
        if which == "request_put" or (which == "request_txn" and _has_put(op.request_txn)):
            return True
    return False
