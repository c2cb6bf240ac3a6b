"""``/debug/inject``: the HTTP API of fault injection (``--experimental-fault-injection``).

JSON in, JSON out; the faults themselves are ``core.faults``.  Served on the client side's HTTP
(the client port, ``--listen-client-http-urls``), never on the metrics listener.

    GET    /debug/inject               the faults set: {"faults": [...]}
    DELETE /debug/inject               clear them all (paused requests proceed): {"cleared": n}
    DELETE /debug/inject/<id>          clear one
    GET    /debug/inject/errors        the errors that can be injected, with their gRPC code and message
    POST   /debug/inject/error         {"methods", "error", "count", "fraction", "duration"}
    POST   /debug/inject/latency       {"methods", "delay", "count", "fraction", "duration"}
    POST   /debug/inject/pause         {"duration", "methods"}
    POST   /debug/inject/cut-watches   {"error"}: every open watch stream ends now
    POST   /debug/inject/expire-lease  {"id"}: the lease expires now

A fault that cannot be set is answered 400 {"error": "..."}; an unknown lease 404.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from .. import errors
from ..core.faults import FaultInjector, FaultSpecError
from .httpconn import BodyTooLarge
from .httpd import Request, Response

PREFIX = "/debug/inject"
MAX_BODY_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def _json(status: int, body: object, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(body).encode() + b"\n",
                    [("Content-Type", "application/json"), *(headers or [])])


def _refused(status: int, message: str) -> Response:
    return _json(status, {"error": message})


class InjectApi:
    """Routes ``/debug/inject`` requests to the server's ``FaultInjector``."""

    def __init__(self, faults: FaultInjector) -> None:
        self._faults = faults
        self._routes: dict[str, dict[str, Endpoint]] = {
            PREFIX: {"GET": self._list, "DELETE": self._clear},
            f"{PREFIX}/errors": {"GET": self._errors},
            f"{PREFIX}/cut-watches": {"POST": self._cut_watches},
            f"{PREFIX}/expire-lease": {"POST": self._expire_lease},
        }
        for kind in ("error", "latency", "pause"):
            self._routes[f"{PREFIX}/{kind}"] = {"POST": lambda r, k=kind: self._add(r, k)}

    @staticmethod
    def handles(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def handle(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            fault_id = request.path.removeprefix(PREFIX + "/")
            if not fault_id.isdigit():
                return _refused(404, f"no such fault injection endpoint: {request.path}")
            methods = {"DELETE": lambda r: self._remove(int(fault_id))}
        endpoint = methods.get(request.method)
        if endpoint is None:
            return _json(405, {"error": f"method {request.method} not allowed"}, [("Allow", ", ".join(methods))])
        try:
            return await endpoint(request)
        except FaultSpecError as exc:
            return _refused(400, str(exc))
        except BodyTooLarge:
            return _refused(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")

    # -- endpoints ------------------------------------------------------------------------------
    async def _list(self, request: Request) -> Response:
        return _json(200, {"faults": self._faults.describe()})

    async def _clear(self, request: Request) -> Response:
        return _json(200, {"cleared": self._faults.clear()})

    async def _remove(self, fault_id: int) -> Response:
        if not self._faults.remove(fault_id):
            return _refused(404, f"no fault {fault_id}")
        return _json(200, {"cleared": 1})

    async def _errors(self, request: Request) -> Response:
        return _json(200, {"errors": self._faults.error_table})

    async def _add(self, request: Request, kind: str) -> Response:
        fault = self._faults.add(kind, await _params(request))
        return _json(200, fault.describe())

    async def _cut_watches(self, request: Request) -> Response:
        streams, error = self._faults.cut_watches(await _params(request))
        return _json(200, {"streams": streams, "code": error.code.name, "message": error.message})

    async def _expire_lease(self, request: Request) -> Response:
        params = await _params(request)
        try:
            lease_id, keys = await self._faults.expire_lease(params)
        except errors.EtcdError as exc:
            if exc is not errors.LEASE_NOT_FOUND:
                return _refused(503, exc.message)  # the data dir cannot be written
            return _refused(404, exc.message)
        return _json(200, {"id": str(lease_id), "keys": keys})


async def _params(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is {}."""
    body = await request.body.read_all(MAX_BODY_BYTES)
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FaultSpecError(f"the body is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise FaultSpecError("the body must be a JSON object")
    return params
