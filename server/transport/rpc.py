"""The gRPC method registry and the guards around every servicer method.

Every etcd service is registered from its descriptor; a method a servicer does not implement
answers UNIMPLEMENTED with the method's name.  The guard counts each call in the metrics, turns
a request grpc-go would have refused (``BadRequest``) into its status, and ends a call that
raised with the status ``api.status`` maps the error to (UNKNOWN, logged, for anything else).
It is also where injected faults (``core.faults``) hit: once per request, a stream's requests
included, at the cost of one attribute check while none is set.  Over a shared backend a gate
(``api.credentials.TokenCatchUp``) makes a call whose token may come from a log entry not applied
here yet wait for the log before its handler runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from ..api.context import CallContext
from ..api.status import grpc_status
from ..errors import Code, EtcdError
from .metrics import GrpcMetrics, MethodStats, grpc_type
from .wirescan import redecode

log = logging.getLogger("etcdlite.api")


class Faults(Protocol):
    """The fault injector as the guards see it (``core.faults.FaultInjector``)."""

    active: bool

    async def before(self, method: str) -> None: ...


class CallGate(Protocol):
    """What a call may wait for before its handler runs (``api.credentials.TokenCatchUp``)."""

    def pending(self, context: CallContext) -> bool: ...

    async def wait(self) -> None: ...


class _NoFaults:
    """The guards' injector when fault injection is off: never active."""

    active = False

    async def before(self, method: str) -> None:  # pragma: no cover - never called
        return None


class RpcContext(CallContext, Protocol):
    """What the guards need of a call beyond the servicers' ``CallContext``."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn: ...

    def code(self) -> grpc.StatusCode | None: ...


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def abort_with(context: RpcContext, exc: BaseException, method: str) -> None:
    status = grpc_status(exc)
    if status is not None:
        await context.abort(*status)
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.UNKNOWN, f"etcdlite: internal error in {method}: {exc}")


class BadRequest:
    """Handed to a handler instead of a request that grpc-go would have refused before etcd saw it."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


def _serialize(response: Any) -> bytes:
    """A response message, or one core built as its encoding already (``core.ranges.EncodedResponse``)."""
    data: bytes = response.SerializeToString()
    return data


def _deserializer(req_cls: Any, max_bytes: int, max_txn_ops: int) -> Callable[[bytes], Any]:
    """Parse a request, refusing what grpc-go refuses with grpc-go's words.

    gRPC core refuses a message above ``max_bytes`` first, at its length prefix (app.py); the
    size check here only guards a handler called with a bigger one some other way.
    What upb refuses and grpc-go would take (deep Txns, non-UTF-8 strings) is sorted out by
    ``wirescan.redecode``.
    """
    parse = req_cls.FromString

    def deserialize(data: bytes) -> Any:
        if len(data) > max_bytes:
            return BadRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"grpc: received message larger than max ({len(data)} vs. {max_bytes})")
        try:
            return parse(data)
        except DecodeError as exc:
            outcome = redecode(req_cls, data, exc, max_txn_ops)
            return BadRequest(*outcome) if isinstance(outcome, tuple) else outcome

    return deserialize


class _CheckedRequests:
    """A client stream's requests: one grpc-go would have refused, or one an injected fault hits,
    ends the call.  ``failure`` keeps that error, so the call ends with it also when the servicer
    read the requests in a task of its own and swallowed it (Watch)."""

    __slots__ = ("_requests", "_context", "_faults", "_method", "failure")

    def __init__(self, requests: Any, context: RpcContext, faults: Faults, method: str) -> None:
        self._requests = aiter(requests)
        self._context = context
        self._faults = faults
        self._method = method
        self.failure: BaseException | None = None

    def __aiter__(self) -> _CheckedRequests:
        return self

    async def __anext__(self) -> Any:
        request = await anext(self._requests)
        if type(request) is BadRequest:
            self.failure = EtcdError(Code[request.code.name], request.message)
            await self._context.abort(request.code, request.message)
        if self._faults.active:
            try:
                await self._faults.before(self._method)
            except EtcdError as exc:
                self.failure = exc
                raise
        return request


def _status_of(exc: BaseException, context: RpcContext) -> grpc.StatusCode:
    """The status a failed call ends with, for grpc_server_handled_total."""
    status = grpc_status(exc)
    if status is not None:
        return status[0]
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.UNKNOWN


def _guard_unary(fn: Callable[..., Any], method: str, stats: MethodStats, faults: Faults, short: str,
                 gate: CallGate | None) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def handler(request: Any, context: RpcContext) -> Any:
        stats.started += 1
        try:
            if type(request) is BadRequest:
                await context.abort(request.code, request.message)
            if faults.active:
                await faults.before(short)
            if gate is not None and gate.pending(context):
                await gate.wait()
            response = await fn(request, context)
        except BaseException as exc:
            stats.done(_status_of(exc, context))
            if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
                raise
            await abort_with(context, exc, method)  # every other error becomes a status
            raise
        stats.handled[0] += 1
        if stats.observe is not None:
            stats.observe(request, response)
        return response

    return handler


def _guard_stream(fn: Callable[..., Any], method: str, stats: MethodStats, client_streaming: bool,
                  faults: Faults, short: str, gate: CallGate | None) -> Callable[..., Any]:
    """Streaming handlers written as coroutines that use ``context.write`` / ``read``."""

    @functools.wraps(fn)
    async def handler(request_or_iterator: Any, context: RpcContext) -> None:
        stats.started += 1
        try:
            if type(request_or_iterator) is BadRequest:
                await context.abort(request_or_iterator.code, request_or_iterator.message)
            if gate is not None and gate.pending(context):  # a stream's token is its call's
                await gate.wait()
            if client_streaming:
                requests = _CheckedRequests(request_or_iterator, context, faults, short)
                await fn(requests, context)
                if requests.failure is not None:
                    raise requests.failure
            else:
                if faults.active:
                    await faults.before(short)
                await fn(request_or_iterator, context)
        except BaseException as exc:
            stats.done(_status_of(exc, context))
            if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
                raise
            await abort_with(context, exc, method)
            raise
        stats.handled[0] += 1

    return handler


class PerMessage:
    """A bidi stream whose every request gets exactly one response (LeaseKeepAlive), as the engine
    serves it without a task: ``each`` is the guarded handler of one message.  The servicer provides
    it as ``<method>_each(request, context) -> response``; the plain stream handler (``<method>``)
    stays for the HTTP gateway."""

    __slots__ = ("_fn", "_method", "_stats", "_faults", "_short", "_gate")

    def __init__(self, fn: Callable[..., Any], method: str, stats: MethodStats, faults: Faults, short: str,
                 gate: CallGate | None = None) -> None:
        self._fn = fn
        self._method = method
        self._stats = stats
        self._faults = faults
        self._short = short
        self._gate = gate

    def begin(self) -> None:
        self._stats.started += 1

    async def each(self, request: Any, context: RpcContext) -> Any:
        try:
            if type(request) is BadRequest:
                await context.abort(request.code, request.message)
            if self._faults.active:
                await self._faults.before(self._short)
            if self._gate is not None and self._gate.pending(context):
                await self._gate.wait()
            return await self._fn(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort_with(context, exc, self._method)  # every other error becomes a status
            raise

    def end(self, exc: BaseException | None, context: RpcContext) -> None:
        if exc is None:
            self._stats.handled[0] += 1
        else:
            self._stats.done(_status_of(exc, context))


class MethodHandler(NamedTuple):
    """grpc.RpcMethodHandler's fields, plus the engine's per-message path where a servicer has one."""

    request_streaming: bool
    response_streaming: bool
    request_deserializer: Callable[[bytes], Any] | None
    response_serializer: Callable[[Any], bytes] | None
    unary_unary: Callable[..., Any] | None
    unary_stream: Callable[..., Any] | None
    stream_unary: Callable[..., Any] | None
    stream_stream: Callable[..., Any] | None
    per_message: PerMessage | None = None


def _unimplemented(full_name: str, stats: MethodStats) -> Callable[..., Any]:
    async def handler(request: Any, context: RpcContext) -> None:
        stats.started += 1
        stats.done(grpc.StatusCode.UNIMPLEMENTED)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"etcdlite: {full_name} is not implemented")

    return handler


def generic_handler(service: ServiceDescriptor, impl: object | None, metrics: GrpcMetrics | None = None,
                    registry: dict[str, grpc.RpcMethodHandler] | None = None,
                    max_receive_bytes: int = 4 * 1024 * 1024, faults: Faults | None = None,
                    max_txn_ops: int = 128, gate: CallGate | None = None) -> grpc.GenericRpcHandler:
    """The service's handlers, counted in ``metrics``; each is also put in ``registry`` under
    its path ("/etcdserverpb.KV/Range"), where the HTTP gateway finds the very same handler.
    ``faults``: the injector whose faults hit them, named "Service/Method" ("KV/Range"); ``gate``:
    what each call may wait for first (None: nothing)."""
    metrics = metrics if metrics is not None else GrpcMetrics()
    faults = faults if faults is not None else _NoFaults()
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        req_cls = message_factory.GetMessageClass(method.input_type)
        full = f"{service.full_name}/{method.name}"
        short = f"{service.name}/{method.name}"
        fn = getattr(impl, _snake(method.name), None) if impl is not None else None
        cs, ss = method.client_streaming, method.server_streaming
        stats = metrics.register(service.full_name, method.name, grpc_type(cs, ss))
        if fn is None:
            fn = _unimplemented(full, stats)
        elif cs or ss:
            fn = _guard_stream(fn, full, stats, cs, faults, short, gate)
        else:
            fn = _guard_unary(fn, full, stats, faults, short, gate)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{full} handler must be async")
        kwargs = dict(request_deserializer=_deserializer(req_cls, max_receive_bytes, max_txn_ops),
                      response_serializer=_serialize)
        each = getattr(impl, _snake(method.name) + "_each", None) if impl is not None and cs and ss else None
        if each is not None:
            per_message = PerMessage(each, full, stats, faults, short, gate)
            handlers[method.name] = MethodHandler(  # type: ignore[assignment]
                True, True, kwargs["request_deserializer"], kwargs["response_serializer"], None, None, None, fn,
                per_message)
        elif cs and ss:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(fn, **kwargs)
        elif cs:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(fn, **kwargs)
        elif ss:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(fn, **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(fn, **kwargs)
        if registry is not None:
            registry[f"/{full}"] = handlers[method.name]
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
