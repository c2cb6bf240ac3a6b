"""etcdserverpb.Watch: the bidi stream over a hub WatchStream (etcd's v3rpc/watch.go).

The reader turns requests into creates, cancels and progress answers; the
sender drains the stream's queue in order, adds prev_kv, fragments large
responses and sends the periodic progress notifications.  A client that stops
sending (half-close) keeps receiving, as in etcd; the stream's watchers are
canceled when the RPC ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .. import errors
from ..core.auth.model import WATCH_PERMISSION_DENIED, Credentials
from ..core.kv import set_kv
from ..core.server import Core
from ..core.watch import WatchStream
from ..core.watchers import Watcher, WatchResponse, WatchSpec
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..pb.mvccpb import kv_pb2
from ..storage.backend import KeyValue
from .context import CallContext
from .credentials import CredentialsReader

log = logging.getLogger("etcdlite.watch")

MIN_PROGRESS_INTERVAL = 0.1  # etcd's minWatchProgressInterval
_EVENTS_FIELD_TAG_BYTES = 1  # WatchResponse.events is field 11: a one-byte tag

Send = Callable[[pb.WatchResponse], Awaitable[None]]


def progress_interval(configured: float) -> float:
    """etcd raises a positive interval below 100ms to 100ms; 0 keeps the 10 minute default."""
    if configured <= 0:
        return 600.0
    if configured < MIN_PROGRESS_INTERVAL:
        log.warning("adjusting watch progress notify interval to minimum period",
                    extra={"fields": {"min-watch-progress-notify-interval": "100ms"}})
        return MIN_PROGRESS_INTERVAL
    return configured


def spec_from_request(creq: pb.WatchCreateRequest, current_revision: int) -> WatchSpec:
    """etcd's recvLoop normalisation: empty key is "\\0", "\\0" range_end is "from key"."""
    key = creq.key or b"\x00"
    end: bytes | None = creq.range_end or None
    if end == b"\x00":
        end = b""
    filters = set(creq.filters)
    return WatchSpec(
        key=key, end=end,
        start_revision=creq.start_revision or current_revision + 1,
        watch_id=creq.watch_id,
        no_put=pb.WatchCreateRequest.NOPUT in filters,
        no_delete=pb.WatchCreateRequest.NODELETE in filters,
        prev_kv=creq.prev_kv, fragment=creq.fragment, progress_notify=creq.progress_notify,
    )


def _is_create(kv: KeyValue) -> bool:
    return not kv.is_tombstone and kv.create_revision == kv.mod_revision


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


async def send_fragments(wr: pb.WatchResponse, max_bytes: int, send: Send) -> None:
    """etcd's sendFragments: split a response of 2+ events at ``max_bytes``; all but the last say fragment."""
    if wr.ByteSize() < max_bytes or len(wr.events) < 2:
        await send(wr)
        return
    events = list(wr.events)
    template = pb.WatchResponse()
    template.CopyFrom(wr)
    del template.events[:]
    template.fragment = True
    base = template.ByteSize()
    i = 0
    while True:
        cur = pb.WatchResponse()
        cur.CopyFrom(template)
        size = base
        while i < len(events):
            n = events[i].ByteSize()
            size += _EVENTS_FIELD_TAG_BYTES + _varint_size(n) + n
            if len(cur.events) >= 1 and size >= max_bytes:
                break
            cur.events.append(events[i])
            i += 1
        if i == len(events):
            cur.fragment = False
        await send(cur)
        if not cur.fragment:
            return


def _watch_id_field(watch_id: int) -> bytes:
    """WatchResponse.watch_id (field 2, varint) on the wire; proto3 leaves out a zero."""
    if not watch_id:
        return b""
    out = bytearray(b"\x10")
    value = watch_id & 0xFFFFFFFFFFFFFFFF  # int64: a negative id is ten bytes, as protobuf writes it
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class EncodedEvents:
    """Recently encoded event bodies, by header revision, events and prev_kv, for all the streams of a
    server. An entry keeps its events alive, so the ids in its key cannot be reused meanwhile."""

    SIZE = 256

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[tuple[Any, ...], tuple[bytes, list[KeyValue]]] = \
            collections.OrderedDict()

    def get(self, revision: int, events: list[KeyValue], with_prev: bool,
            encode: Callable[[int, list[KeyValue], bool], bytes]) -> bytes:
        key = (revision, with_prev, *map(id, events))
        entry = self._entries.get(key)
        if entry is None:
            entry = (encode(revision, events, with_prev), events)
            self._entries[key] = entry
            if len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)
        return entry[0]


class _WatchSession:
    """One Watch RPC: its hub stream, reader and sender."""

    def __init__(self, core: Core, stream: WatchStream, send: Send, interval: float, max_bytes: int,
                 context: CallContext | None = None, who: Credentials | None = None,
                 encoded: EncodedEvents | None = None) -> None:
        self._core = core
        # the engine's calls take ready-made bytes; the HTTP gateway's take messages (it writes JSON)
        self._send_serialized = getattr(context, "write_serialized", None) if encoded is not None else None
        self._encoded = encoded if encoded is not None else EncodedEvents()
        self._who = who  # the RPC's credentials, for the permission check of each create
        self._stream = stream
        self._send = send
        self._interval = interval
        self._max_bytes = max_bytes
        self._progress: dict[Watcher, bool] = {}  # progress_notify watchers: is a notification due?
        self._tick_due = False

    # -- requests -------------------------------------------------------------------------
    async def recv_loop(self, requests: AsyncIterator[pb.WatchRequest]) -> None:
        stream = self._stream
        async for req in requests:
            await stream.wait_control_room()
            if stream.closed:
                return
            which = req.WhichOneof("request_union")
            if which == "create_request":
                self._create(req.create_request)
            elif which == "cancel_request":
                w = stream.cancel(req.cancel_request.watch_id)
                if w is not None:
                    self._progress.pop(w, None)
            elif which == "progress_request":
                stream.progress_all()
            # anything else is ignored, as etcd does

    def _create(self, creq: pb.WatchCreateRequest) -> None:
        if not self._core.watch_permitted(self._who, creq):
            # etcd 3.5's refusal: created and canceled, under the requested watch id, as a control response
            self._stream.refuse(creq.watch_id, WATCH_PERMISSION_DENIED)
            return
        spec = spec_from_request(creq, self._stream.rev())
        w = self._stream.create(spec)
        if w is not None and spec.progress_notify:
            self._progress[w] = True

    # -- responses ------------------------------------------------------------------------
    async def send_loop(self) -> None:
        stream = self._stream
        # one timer per interval wakes the loop for the progress tick, rather than a timeout per wait
        interval = self._tick_interval()
        loop = asyncio.get_running_loop()

        def tick() -> None:
            nonlocal timer
            self._tick_due = True
            stream.wake()
            timer = loop.call_later(interval, tick)

        timer = loop.call_later(interval, tick)
        try:
            while True:
                if self._tick_due:
                    self._tick_due = False
                    self._progress_tick()
                resp = stream.pop()
                if resp is None:
                    if stream.closed:
                        return
                    await stream.wait_ready()
                    continue
                await self._deliver(resp)
        finally:
            timer.cancel()

    def _tick_interval(self) -> float:
        # etcd adds up to 10% jitter, once per stream, so streams opened together do not report together
        return self._interval + random.uniform(0, self._interval / 10)

    def _progress_tick(self) -> None:
        for w, due in self._progress.items():
            if due:
                self._stream.request_progress(w.id)
            self._progress[w] = True

    async def _deliver(self, resp: WatchResponse) -> None:
        w = resp.watcher
        if (self._send_serialized is not None and w is not None and resp.events and not resp.control
                and not w.spec.fragment and not (resp.canceled or resp.compact_revision or resp.cancel_reason)):
            # the same events go to every stream that watches them: encoded once, only the id differs
            body = self._encoded.get(resp.revision, resp.events, w.spec.prev_kv, self._encode_body)
            await self._send_serialized(_watch_id_field(resp.watch_id) + body)
            if w in self._progress:
                self._progress[w] = False
            return
        wr = self._to_pb(resp)
        if resp.control or w is None:
            await self._send(wr)
            return
        if w.spec.fragment:
            await send_fragments(wr, self._max_bytes, self._send)
        else:
            await self._send(wr)
        if resp.events and w in self._progress:
            self._progress[w] = False  # an event response stands in for the next progress notification

    def _to_pb(self, resp: WatchResponse) -> pb.WatchResponse:
        # built a field at a time, events in place: far cheaper with upb than keyword construction
        wr = pb.WatchResponse()
        if resp.watch_id:
            wr.watch_id = resp.watch_id
        if resp.created:
            wr.created = True
        if resp.canceled or resp.compact_revision:
            wr.canceled = True
        if resp.cancel_reason:
            wr.cancel_reason = resp.cancel_reason
        if resp.compact_revision:
            wr.compact_revision = resp.compact_revision
        self._fill_body(wr, resp.revision, resp.events, resp.watcher is not None and resp.watcher.spec.prev_kv)
        return wr

    def _encode_body(self, revision: int, events: list[KeyValue], with_prev: bool) -> bytes:
        """The header and events of an event response, serialized (fields 1 and 11)."""
        wr = pb.WatchResponse()
        self._fill_body(wr, revision, events, with_prev)
        return wr.SerializeToString()

    def _fill_body(self, wr: pb.WatchResponse, revision: int, events: list[KeyValue], with_prev: bool) -> None:
        core = self._core
        header = wr.header
        header.cluster_id = core.cluster_id
        header.member_id = core.member_id
        header.raft_term = core.raft_term
        header.revision = revision
        add = wr.events.add
        for kv in events:
            self._event(add(), kv, with_prev)

    def _event(self, ev: kv_pb2.Event, kv: KeyValue, with_prev: bool) -> None:
        if kv.version == 0:  # a tombstone
            ev.type = kv_pb2.Event.DELETE
        set_kv(ev.kv, kv)
        if with_prev and not _is_create(kv):
            prev = self._core.prev_kv(kv)
            if prev is not None:
                set_kv(ev.prev_kv, prev)


class WatchService:
    def __init__(self, core: Core, who: CredentialsReader) -> None:
        self._core = core
        self._who = who
        self._hub = core.watches
        self._interval = progress_interval(core.config.watch_progress_notify_interval)
        # etcd fragments at the gRPC receive limit: max-request-bytes plus gRPC's overhead allowance
        self._max_bytes = core.config.grpc_max_receive_bytes
        self._encoded = EncodedEvents()

    async def watch(self, requests: AsyncIterator[pb.WatchRequest], context: CallContext) -> None:
        stream = self._hub.new_stream()
        session = _WatchSession(self._core, stream, context.write, self._interval, self._max_bytes, context,
                                self._who(context), self._encoded)
        sender = asyncio.create_task(session.send_loop(), name="watch-send")
        reader = asyncio.create_task(session.recv_loop(requests), name="watch-recv")
        try:
            await asyncio.wait((sender, reader), return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception() is None:
                await asyncio.wait((sender,))  # the client half-closed: keep sending until it goes away
        finally:
            stream.close()
            for task in (reader, sender):
                task.cancel()
            results = await asyncio.gather(reader, sender, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("watch stream ended by an error: %r", result)
        if stream.ended_by is not None:  # cut (fault injection)
            raise stream.ended_by
        if self._hub.closed:
            raise errors.STOPPED
