"""etcd's grpc-gateway: the JSON API under ``/v3/`` (and the deprecated ``/v3beta/``).

Each route calls the very handler the gRPC server registered (servicer, error guard and
metrics included) with a ``GatewayContext`` in place of gRPC's, so answers and errors are the
gRPC API's.  The HTTP side is grpc-gateway v1.16's as etcd 3.5 uses it: request bodies decoded
by ``gojson`` (Go's texts for bad JSON), answers in jsonpb with proto field names, errors as
``{"error","code","message"}`` with the HTTP status grpc-gateway maps the gRPC code to, and
streams (watch, lease keep-alive, snapshot, observe) as one ``{"result":...}`` line per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from ..core.ranges import EncodedResponse
from ..pb.etcdserverpb import rpc_pb2
from ..pb.v3electionpb import v3election_pb2
from ..pb.v3lockpb import v3lock_pb2
from . import gojson, jsonpb
from .httpconn import Body, BodyError, BodyTooLarge
from .httpd import Headers, Request, Response, StreamResponse, text_response
from .rpc import BadRequest

log = logging.getLogger("etcdlite.gateway")

# etcd 3.5's routes (its protos' google.api.http options; HashKV shares Hash's path there, so
# only Hash answers it; /v3/maintenance/hashkv came with 3.6).
ROUTES: dict[str, str] = {
    "/v3/kv/range": "etcdserverpb.KV/Range",
    "/v3/kv/put": "etcdserverpb.KV/Put",
    "/v3/kv/deleterange": "etcdserverpb.KV/DeleteRange",
    "/v3/kv/txn": "etcdserverpb.KV/Txn",
    "/v3/kv/compaction": "etcdserverpb.KV/Compact",
    "/v3/watch": "etcdserverpb.Watch/Watch",
    "/v3/lease/grant": "etcdserverpb.Lease/LeaseGrant",
    "/v3/lease/revoke": "etcdserverpb.Lease/LeaseRevoke",
    "/v3/kv/lease/revoke": "etcdserverpb.Lease/LeaseRevoke",
    "/v3/lease/keepalive": "etcdserverpb.Lease/LeaseKeepAlive",
    "/v3/lease/timetolive": "etcdserverpb.Lease/LeaseTimeToLive",
    "/v3/kv/lease/timetolive": "etcdserverpb.Lease/LeaseTimeToLive",
    "/v3/lease/leases": "etcdserverpb.Lease/LeaseLeases",
    "/v3/kv/lease/leases": "etcdserverpb.Lease/LeaseLeases",
    "/v3/cluster/member/add": "etcdserverpb.Cluster/MemberAdd",
    "/v3/cluster/member/remove": "etcdserverpb.Cluster/MemberRemove",
    "/v3/cluster/member/update": "etcdserverpb.Cluster/MemberUpdate",
    "/v3/cluster/member/list": "etcdserverpb.Cluster/MemberList",
    "/v3/cluster/member/promote": "etcdserverpb.Cluster/MemberPromote",
    "/v3/maintenance/alarm": "etcdserverpb.Maintenance/Alarm",
    "/v3/maintenance/status": "etcdserverpb.Maintenance/Status",
    "/v3/maintenance/defragment": "etcdserverpb.Maintenance/Defragment",
    "/v3/maintenance/hash": "etcdserverpb.Maintenance/Hash",
    "/v3/maintenance/snapshot": "etcdserverpb.Maintenance/Snapshot",
    "/v3/maintenance/transfer-leadership": "etcdserverpb.Maintenance/MoveLeader",
    "/v3/maintenance/downgrade": "etcdserverpb.Maintenance/Downgrade",
    "/v3/auth/enable": "etcdserverpb.Auth/AuthEnable",
    "/v3/auth/disable": "etcdserverpb.Auth/AuthDisable",
    "/v3/auth/status": "etcdserverpb.Auth/AuthStatus",
    "/v3/auth/authenticate": "etcdserverpb.Auth/Authenticate",
    "/v3/auth/user/add": "etcdserverpb.Auth/UserAdd",
    "/v3/auth/user/get": "etcdserverpb.Auth/UserGet",
    "/v3/auth/user/list": "etcdserverpb.Auth/UserList",
    "/v3/auth/user/delete": "etcdserverpb.Auth/UserDelete",
    "/v3/auth/user/changepw": "etcdserverpb.Auth/UserChangePassword",
    "/v3/auth/user/grant": "etcdserverpb.Auth/UserGrantRole",
    "/v3/auth/user/revoke": "etcdserverpb.Auth/UserRevokeRole",
    "/v3/auth/role/add": "etcdserverpb.Auth/RoleAdd",
    "/v3/auth/role/get": "etcdserverpb.Auth/RoleGet",
    "/v3/auth/role/list": "etcdserverpb.Auth/RoleList",
    "/v3/auth/role/delete": "etcdserverpb.Auth/RoleDelete",
    "/v3/auth/role/grant": "etcdserverpb.Auth/RoleGrantPermission",
    "/v3/auth/role/revoke": "etcdserverpb.Auth/RoleRevokePermission",
    "/v3/lock/lock": "v3lockpb.Lock/Lock",
    "/v3/lock/unlock": "v3lockpb.Lock/Unlock",
    "/v3/election/campaign": "v3electionpb.Election/Campaign",
    "/v3/election/proclaim": "v3electionpb.Election/Proclaim",
    "/v3/election/leader": "v3electionpb.Election/Leader",
    "/v3/election/observe": "v3electionpb.Election/Observe",
    "/v3/election/resign": "v3electionpb.Election/Resign",
}
PREFIXES = ("/v3/", "/v3beta/")  # etcd 3.5 still answers the 3.3-era /v3beta/ paths


# grpc-gateway v1.16's runtime.HTTPStatusFromCode
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 408, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


JSON = "application/json"
_OK_HEADERS: Headers = [("Content-Type", JSON), ("Grpc-Metadata-Content-Type", "application/grpc")]


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    """grpc-gateway's errorBody, as jsonpb writes it."""
    text = jsonpb.go_string(message)
    return f'{{"error":{text},"code":{code.value[0]},"message":{text}}}'.encode()


def error_response(code: grpc.StatusCode, message: str) -> Response:
    return Response(http_status(code), error_body(code, message), [("Content-Type", JSON)])


def stream_error_chunk(code: grpc.StatusCode, message: str) -> bytes:
    """grpc-gateway's mid-stream error: {"error": StreamError} (no newline after it)."""
    status = http_status(code)
    return (f'{{"error":{{"grpc_code":{code.value[0]},"http_code":{status},'
            f'"message":{jsonpb.go_string(message)},"http_status":{jsonpb.go_string(HTTPStatus(status).phrase)}}}}}'
            ).encode()


def result_chunk(message: Message) -> bytes:
    return ('{"result":' + jsonpb.encode_message(message) + "}\n").encode()


# -- the servicer context ----------------------------------------------------------------------

class GatewayAbort(grpc.aio.AbortError):
    """What ``GatewayContext.abort`` raises: the status the call ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GatewayContext:
    """The call context (``api.context.CallContext``) of a call made by the gateway: the metadata
    grpc-gateway forwards, ``write`` into the HTTP stream, ``abort`` as a ``GatewayAbort``."""

    def __init__(self, metadata: Sequence[tuple[str, str]], peer: str,
                 out: asyncio.Queue[Any] | None = None) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer
        self.out = out  # where ``write`` puts a streaming call's messages
        self._code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self._code = code
        raise GatewayAbort(code, details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def write(self, message: Any) -> None:
        if self.out is None:
            raise RuntimeError("write on a unary call")
        await self.out.put(message)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        return None  # an HTTP request carries no deadline


# grpc-gateway's isPermanentHTTPHeader: forwarded as "grpcgateway-<name>"
_PERMANENT_HEADERS = frozenset((
    "accept", "accept-charset", "accept-language", "accept-ranges", "authorization", "cache-control",
    "content-type", "cookie", "date", "expect", "from", "host", "if-match", "if-modified-since", "if-none-match",
    "if-schedule-tag-match", "if-unmodified-since", "max-forwards", "origin", "pragma", "referer", "user-agent",
    "via", "warning"))


def forwarded_metadata(request: Request) -> list[tuple[str, str]]:
    """grpc-gateway's AnnotateContext: Authorization as is, the permanent HTTP headers as
    ``grpcgateway-*`` (etcd's auth tells gateway calls by ``grpcgateway-accept``), Grpc-Metadata-*
    without the prefix, and X-Forwarded-For."""
    out: list[tuple[str, str]] = []
    for name, value in request.headers.items():
        if name == "authorization":
            out.append(("authorization", value))
        if name in _PERMANENT_HEADERS:
            out.append(("grpcgateway-" + name, value))
        elif name.startswith("grpc-metadata-") and len(name) > len("grpc-metadata-"):
            out.append((name[len("grpc-metadata-"):], value))
    if request.peer:
        out.append(("x-forwarded-for", request.peer.rsplit(":", 1)[0]))
    return out


# -- routes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    method: str  # "/etcdserverpb.KV/Range"
    request_cls: type[Message]
    client_streaming: bool
    server_streaming: bool


def _descriptors() -> dict[str, MethodDescriptor]:
    out = {}
    for module in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out[f"{service.full_name}/{m.name}"] = m
    return out


def build_routes() -> dict[str, Route]:
    methods = _descriptors()
    routes = {}
    for path, full in ROUTES.items():
        m = methods[full]
        route = Route(f"/{full}", message_factory.GetMessageClass(m.input_type), m.client_streaming,
                      m.server_streaming)
        for prefix in PREFIXES:
            routes[prefix + path[len("/v3/"):]] = route
    return routes


class _BodyMessages:
    """Successive JSON values of a request body, decoded as they arrive (json.Decoder)."""

    def __init__(self, body: Body, limit: int) -> None:
        self._body = body
        self._limit = limit
        self._buf = b""
        self._pos = 0

    async def next(self, cls: type[Message]) -> Message | None:
        """The next request, None at the end of the body; raises GoJSONError, BodyTooLarge."""
        while True:
            try:
                raw, end = gojson.parse_next(self._buf, self._pos, final=self._body.done)
            except gojson.Incomplete:
                if self._body.done:
                    raise
                await self._more()
                continue
            if raw is None:
                if self._body.done:
                    return None
                await self._more()
                continue
            self._buf, self._pos = self._buf[end:], 0
            return jsonpb.decode_message(raw, cls())

    async def _more(self) -> None:
        data = await self._body.read()
        if len(self._buf) + len(data) > self._limit:
            raise BodyTooLarge()
        self._buf += data


_END = object()


class Gateway:
    """Answers ``/v3/...`` requests by calling the registered gRPC handlers."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], max_message_bytes: int,
                 max_streams: int = 2**31 - 1) -> None:
        self._handlers = handlers
        self._routes = build_routes()
        self._max_message = max_message_bytes
        # etcd's gateway is one gRPC client connection, so --max-concurrent-streams bounds the calls of all
        # HTTP clients together: one more waits until a call (a watch, say) ends
        self._streams = asyncio.Semaphore(max_streams)
        # JSON of the largest message the gRPC server takes, with room for base64 and field names
        self._max_body = 4 * max_message_bytes + (64 << 10)

    def handles(self, path: str) -> bool:
        return path.startswith(PREFIXES)

    async def handle(self, request: Request) -> Response | StreamResponse:
        route = self._routes.get(request.path)
        if route is None:
            return text_response(404, "Not Found")
        if request.method != "POST":
            return text_response(405, "Method Not Allowed")
        handler = self._handlers.get(route.method)
        if handler is None:  # every etcd service is registered; this is only a misconfiguration
            return error_response(grpc.StatusCode.UNIMPLEMENTED, f"unknown service {route.method}")
        if route.client_streaming:
            return await self._bidi(route, handler, request)
        try:
            message = await self._read_one(route, request)
        except gojson.GoJSONError as exc:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except BodyTooLarge:
            return self._too_large(self._max_body)
        except BodyError as exc:  # grpc-gateway: the body's read error as InvalidArgument
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, exc.text)
        request_or_refusal = self._within_limit(message)
        context = GatewayContext(forwarded_metadata(request), request.peer,
                                 asyncio.Queue(maxsize=16) if route.server_streaming else None)
        if route.server_streaming:
            return await self._stream(handler.unary_stream(request_or_refusal, context), context)
        try:
            async with self._streams:
                reply = await handler.unary_unary(request_or_refusal, context)
        except GatewayAbort as exc:
            return error_response(exc.code, exc.details)
        if isinstance(reply, EncodedResponse):  # a large range, built as its wire encoding
            reply = reply.message()
        return Response(200, jsonpb.encode_message(reply).encode(), list(_OK_HEADERS))

    def _refusal(self, size: int) -> BadRequest:
        return BadRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"grpc: received message larger than max ({size} vs. {self._max_message})")

    def _too_large(self, size: int) -> Response:
        refusal = self._refusal(size)
        return error_response(refusal.code, refusal.message)

    def _within_limit(self, message: Message) -> Message | BadRequest:
        """The request, or the refusal gRPC's receive limit makes of it (the handler answers it,
        so it is counted like any other call)."""
        size = message.ByteSize()
        return message if size <= self._max_message else self._refusal(size)

    async def _read_one(self, route: Route, request: Request) -> Message:
        body = await request.body.read_all(self._max_body)
        raw, _ = gojson.parse_next(body)
        return jsonpb.decode_message(raw, route.request_cls())

    async def _bidi(self, route: Route, handler: grpc.RpcMethodHandler, request: Request) -> Response | StreamResponse:
        reader = _BodyMessages(request.body, self._max_body)
        try:
            first = await reader.next(route.request_cls)
        except gojson.GoJSONError as exc:  # not a gRPC status: grpc-gateway answers Unknown
            return error_response(grpc.StatusCode.UNKNOWN, str(exc))
        except BodyTooLarge:
            return self._too_large(self._max_body)
        context = GatewayContext(forwarded_metadata(request), request.peer, asyncio.Queue(maxsize=16))
        return await self._stream(handler.stream_stream(self._requests(first, reader, route), context), context)

    async def _requests(self, first: Message | None, reader: _BodyMessages, route: Route
                        ) -> AsyncIterator[Message | BadRequest]:
        """The requests of a bidi call; like grpc-gateway, a body that stops parsing half-closes."""
        if first is None:
            return
        yield self._within_limit(first)
        while True:
            try:
                message = await reader.next(route.request_cls)
            except (gojson.GoJSONError, BodyTooLarge, BodyError, ConnectionError) as exc:
                log.debug("gateway: request stream ended: %s", exc)
                return
            if message is None:
                return
            yield self._within_limit(message)

    async def _stream(self, call: Any, context: GatewayContext) -> Response | StreamResponse:
        out = context.out
        assert out is not None
        task = asyncio.get_running_loop().create_task(self._run(call, out, self._streams), name="gateway-stream")
        try:
            first = await out.get()
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        status = http_status(first.code) if isinstance(first, GatewayAbort) else 200
        headers = list(_OK_HEADERS) if status == 200 else [("Content-Type", JSON)]
        return StreamResponse(status, self._chunks(first, out, task), headers)

    @staticmethod
    async def _run(call: Any, out: asyncio.Queue[Any], slot: asyncio.Semaphore) -> None:
        try:
            async with slot:  # held while the call runs (see --max-concurrent-streams above)
                await call
        except GatewayAbort as exc:
            await out.put(exc)
            return
        except asyncio.CancelledError:
            call.close()  # cancelled while waiting for a slot: the call never started
            raise
        except Exception as exc:  # noqa: BLE001 - the guard turns errors into statuses; this is a bug
            log.exception("gateway: a streaming call failed outside its guard")
            await out.put(GatewayAbort(grpc.StatusCode.UNKNOWN, f"etcdlite: internal error: {exc}"))
            return
        await out.put(_END)

    @staticmethod
    async def _chunks(first: Any, out: asyncio.Queue[Any], task: asyncio.Task[None]) -> AsyncIterator[bytes]:
        try:
            item = first
            while item is not _END:
                if isinstance(item, GatewayAbort):
                    yield stream_error_chunk(item.code, item.details)
                    return
                yield result_chunk(item)
                item = await out.get()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
