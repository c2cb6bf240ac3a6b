"""etcdserverpb.KV: each request is one core call."""

from __future__ import annotations

from ..core.server import Core
from ..pb.etcdserverpb import rpc_pb2 as pb
from .context import CallContext
from .credentials import CredentialsReader


class KVService:
    def __init__(self, core: Core, who: CredentialsReader) -> None:
        self._core = core
        self._who = who

    async def range(self, request: pb.RangeRequest, context: CallContext) -> pb.RangeResponse:
        return await self._core.range(request, self._who(context))

    async def put(self, request: pb.PutRequest, context: CallContext) -> pb.PutResponse:
        return await self._core.put(request, self._who(context))

    async def delete_range(self, request: pb.DeleteRangeRequest, context: CallContext) -> pb.DeleteRangeResponse:
        return await self._core.delete_range(request, self._who(context))

    async def txn(self, request: pb.TxnRequest, context: CallContext) -> pb.TxnResponse:
        return await self._core.txn(request, self._who(context))

    async def compact(self, request: pb.CompactionRequest, context: CallContext) -> pb.CompactionResponse:
        return await self._core.compact(request, self._who(context))
