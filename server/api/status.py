"""Domain errors to gRPC statuses, in one table (etcd's togRPCError)."""

from __future__ import annotations

import grpc

from ..errors import Code, EtcdError

GRPC_CODE: dict[Code, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.name) for code in Code}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status an etcd error ends its call with; None for anything else (a bug: UNKNOWN, logged)."""
    if isinstance(exc, EtcdError):
        return GRPC_CODE[exc.code], exc.message
    return None
