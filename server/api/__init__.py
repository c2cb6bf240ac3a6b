"""The gRPC layer: thin servicers that convert requests and errors, holding no state.

Every etcd service is registered from its descriptor; a method a servicer
does not implement answers UNIMPLEMENTED with the method's name.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from google.protobuf.descriptor import ServiceDescriptor

from .. import errors
from ..metrics import GrpcMetrics, MethodStats, grpc_type
from ..wirescan import redecode

log = logging.getLogger("etcdlite.api")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.EtcdError):
        await context.abort(exc.code, exc.message)
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.UNKNOWN, f"etcdlite: internal error in {method}: {exc}")


class BadRequest:
    """Handed to a handler instead of a request that grpc-go would have refused before etcd saw it."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


def _deserializer(req_cls: Any, max_bytes: int, max_txn_ops: int) -> Callable[[bytes], Any]:
    """Parse a request, refusing what grpc-go refuses with grpc-go's words.

    gRPC core's own limit is set far higher, so a request between
    ``--max-request-bytes`` + 512 KiB and that gets etcd's message, not core's.
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


async def _checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    async for request in requests:
        if type(request) is BadRequest:
            await context.abort(request.code, request.message)
        yield request


def _status_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a failed call ends with, for grpc_server_handled_total."""
    if isinstance(exc, errors.EtcdError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.UNKNOWN


def _guard_unary(fn: Callable[..., Any], method: str, stats: MethodStats) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats.started += 1
        try:
            if type(request) is BadRequest:
                await context.abort(request.code, request.message)
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


def _guard_stream(fn: Callable[..., Any], method: str, stats: MethodStats, client_streaming: bool
                  ) -> Callable[..., Any]:
    """Streaming handlers written as coroutines that use ``context.write`` / ``read``."""

    @functools.wraps(fn)
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stats.started += 1
        try:
            if type(request_or_iterator) is BadRequest:
                await context.abort(request_or_iterator.code, request_or_iterator.message)
            if client_streaming:
                request_or_iterator = _checked(request_or_iterator, context)
            await fn(request_or_iterator, context)
        except BaseException as exc:
            stats.done(_status_of(exc, context))
            if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
                raise
            await abort_with(context, exc, method)
            raise
        stats.handled[0] += 1

    return handler


def _unimplemented(full_name: str, stats: MethodStats) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        stats.started += 1
        stats.done(grpc.StatusCode.UNIMPLEMENTED)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"etcdlite: {full_name} is not implemented")

    return handler


def generic_handler(service: ServiceDescriptor, impl: object | None, metrics: GrpcMetrics | None = None,
                    registry: dict[str, grpc.RpcMethodHandler] | None = None,
                    max_receive_bytes: int = 4 * 1024 * 1024, max_txn_ops: int = 128) -> grpc.GenericRpcHandler:
    """The service's handlers, counted in ``metrics``; each is also put in ``registry`` under
    its path ("/etcdserverpb.KV/Range"), where the HTTP gateway finds the very same handler."""
    metrics = metrics if metrics is not None else GrpcMetrics()
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        full = f"{service.full_name}/{method.name}"
        fn = getattr(impl, _snake(method.name), None) if impl is not None else None
        cs, ss = method.client_streaming, method.server_streaming
        stats = metrics.register(service.full_name, method.name, grpc_type(cs, ss))
        if fn is None:
            fn = _unimplemented(full, stats)
        elif cs or ss:
            fn = _guard_stream(fn, full, stats, cs)
        else:
            fn = _guard_unary(fn, full, stats)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{full} handler must be async")
        kwargs = dict(request_deserializer=_deserializer(req_cls, max_receive_bytes, max_txn_ops),
                      response_serializer=resp_cls.SerializeToString)
        if cs and ss:
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
