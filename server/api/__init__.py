"""The gRPC layer: thin servicers that convert requests and errors, holding no state.

Every etcd service is registered from its descriptor; a method a servicer
does not implement answers UNIMPLEMENTED with the method's name.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from .. import errors

log = logging.getLogger("etcdlite.api")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.EtcdError):
        await context.abort(exc.code, exc.message)
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.UNKNOWN, f"etcdlite: internal error in {method}: {exc}")


def _guard_unary(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except (errors.EtcdError, Exception) as exc:  # noqa: BLE001 - every error becomes a status
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort_with(context, exc, method)

    return handler


def _guard_stream(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    """Streaming handlers written as coroutines that use ``context.write`` / ``read``."""

    @functools.wraps(fn)
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            await fn(request_or_iterator, context)
        except (errors.EtcdError, Exception) as exc:  # noqa: BLE001
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort_with(context, exc, method)

    return handler


def _unimplemented(full_name: str) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"etcdlite: {full_name} is not implemented")

    return handler


def generic_handler(service: ServiceDescriptor, impl: object | None) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        full = f"{service.full_name}/{method.name}"
        fn = getattr(impl, _snake(method.name), None) if impl is not None else None
        cs, ss = method.client_streaming, method.server_streaming
        if fn is None:
            fn = _unimplemented(full)
        elif cs or ss:
            fn = _guard_stream(fn, full)
        else:
            fn = _guard_unary(fn, full)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{full} handler must be async")
        kwargs = dict(request_deserializer=req_cls.FromString, response_serializer=resp_cls.SerializeToString)
        if cs and ss:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(fn, **kwargs)
        elif cs:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(fn, **kwargs)
        elif ss:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(fn, **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(fn, **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
