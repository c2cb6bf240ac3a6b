"""Large ranges, read and encoded a part at a time with the event loop free in between.

A Range of 200,000 keys takes the store ~0.3 s to collect, as long again to build as a message and
~0.15 s to encode: done in one go, every other client waits that long.  Here a range over many keys
is read ``CHUNK_KEYS`` keys of the index at a time, each part's versions encoded at once, with a
pause for the loop after each (``PartTurns``: one part of all the large reads going on per turn of
the loop, so other clients wait behind one part, however many large reads there are); the answer is
the concatenation of the parts' encodings (protobuf's repeated fields concatenate), sent as is.  Reads at a fixed revision are stable while writes go on;
``ReadPins`` makes a compaction above the read's revision wait until it is done, as etcd's read
transactions hold their pages.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..pb.etcdserverpb import rpc_pb2 as pb
from ..storage.backend import Backend
from .kv import add_kvs

# keys of the index read before the loop gets a turn (~0.75 ms; 1024 let three readers hold other clients
# 3 ms a turn each, and a put waits several turns: its p99 was 140-430 ms while they read 200,000 keys)
CHUNK_KEYS = 256

RangeRequest = pb.RangeRequest


class EncodedResponse:
    """A response built as its wire encoding (a large range): the gRPC engine sends ``data`` as it is;
    ``message()`` decodes it for the JSON gateway."""

    __slots__ = ("cls", "data")

    def __init__(self, cls: Any, data: bytes) -> None:
        self.cls = cls
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name, so serializers take either
        return self.data

    def message(self) -> Any:
        return self.cls.FromString(self.data)


class ReadPins:
    """The revisions long reads are reading at; a compaction above one waits until it ends."""

    def __init__(self) -> None:
        self._pinned: collections.Counter[int] = collections.Counter()
        self._released = asyncio.Event()

    @contextmanager
    def pin(self, revision: int) -> Iterator[None]:
        self._pinned[revision] += 1
        try:
            yield
        finally:
            self._pinned[revision] -= 1
            if not self._pinned[revision]:
                del self._pinned[revision]
            self._released.set()

    async def wait_below(self, revision: int) -> None:
        """Returns once no read at a revision below ``revision`` is going on."""
        while any(pinned < revision for pinned in self._pinned):
            self._released.clear()
            await self._released.wait()


class PartTurns:
    """One part of one large read per turn of the event loop, whatever the count of large reads: the
    parts take turns (first come, first served), so other requests wait behind one part, not one per
    reader."""

    def __init__(self) -> None:
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._granting = False

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting.append(fut)
        if not self._granting:
            self._granting = True
            loop.call_soon(self._grant)
        await fut

    def _grant(self) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._grant)
        else:
            self._granting = False


def sliceable(r: pb.RangeRequest) -> bool:
    """A range read in key order without filters: the requests ``read_in_parts`` serves."""
    if not r.range_end:
        return False
    if r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision:
        return False
    if r.sort_target != RangeRequest.KEY:
        return False
    return r.sort_order in (RangeRequest.NONE, RangeRequest.ASCEND)


async def read_in_parts(backend: Backend, pins: ReadPins, turns: PartTurns, r: pb.RangeRequest,
                        header: pb.ResponseHeader) -> pb.RangeResponse | EncodedResponse:
    """etcd's answer to ``r`` (see ``sliceable``), with ``header`` (its revision: the head)."""
    rev, head = backend.read_revision(r.revision)
    header.revision = head
    end = b"" if r.range_end == b"\x00" else r.range_end
    want = 0 if r.count_only else (r.limit if r.limit > 0 else -1)
    kvs, count, resume = backend.range_chunk(r.key, end, rev, CHUNK_KEYS, want)
    if resume is None:  # one part: the plain message
        resp = pb.RangeResponse()
        resp.header.CopyFrom(header)
        _finish(resp, r, count)
        if kvs:
            add_kvs(resp.kvs, kvs, r.keys_only)
        return resp
    parts = [pb.RangeResponse(header=header).SerializeToString()]
    with pins.pin(rev):
        while True:
            if kvs:
                part = pb.RangeResponse()
                add_kvs(part.kvs, kvs, r.keys_only)
                parts.append(part.SerializeToString())
                if want > 0:
                    want -= len(kvs)
            if resume is None:
                break
            await turns.wait()  # other requests are served meanwhile
            kvs, live, resume = backend.range_chunk(resume, end, rev, CHUNK_KEYS, want)
            count += live
    tail = pb.RangeResponse()
    _finish(tail, r, count)
    parts.append(tail.SerializeToString())
    return EncodedResponse(pb.RangeResponse, b"".join(parts))


def _finish(resp: pb.RangeResponse, r: pb.RangeRequest, count: int) -> None:
    if count:
        resp.count = count
    if r.limit > 0 and not r.count_only and count > r.limit:
        resp.more = True

