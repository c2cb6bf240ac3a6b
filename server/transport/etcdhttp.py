"""etcd's HTTP endpoints and the listeners that serve them.

* ``/health`` (etcd 3.5: alarms, leader, a read; ``?exclude=NOSPACE``, ``?serializable=true``),
  ``/livez`` and ``/readyz`` (etcd 3.6's check registries, also in etcd 3.5.13+), ``/version``,
  ``/metrics``; ``/v3/...`` is the JSON gateway (``gateway.py``); ``/debug/inject`` is fault
  injection (``inject.py``), on the client side with ``--experimental-fault-injection`` only.
* Where: ``--listen-client-http-urls`` (HTTP only, as etcd 3.5), ``--listen-metrics-urls``
  (``/metrics`` and the health endpoints), and the client port itself when the multiplexer in
  ``front.py`` hands a connection over.  Client-side responses carry etcd's default CORS headers.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import posixpath
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from ..api.health import HealthChecks, NodeFigures
from ..config import Config, ConfigError
from ..version import CLUSTER_VERSION, SERVER_VERSION
from .console import Console
from .gateway import Gateway
from .httpd import Headers, HttpServer, Request, Response, StreamResponse, text_response
from .inject import InjectApi
from .metrics import CONTENT_TYPE, ServerMetrics, render

log = logging.getLogger("etcdlite.http")

_CORS: Headers = [("Access-Control-Allow-Headers", "accept, content-type, authorization"),
                  ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
                  ("Access-Control-Allow-Origin", "*")]
_TEXT = "text/plain; charset=utf-8"


def _go_json(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _method_not_allowed() -> Response:
    return text_response(405, "Method Not Allowed", [("Allow", "GET")])


def _query_set(request: Request, name: str) -> set[str]:
    return {v for v in request.query.get(name, []) if v}


class EtcdHttp:
    """Routes one listener's requests: etcd's endpoints, and the gateway where it is served."""

    def __init__(self, checks: HealthChecks, metrics: ServerMetrics, figures: Callable[[], NodeFigures],
                 gateway: Gateway | None, cors: bool, console: Console | None = None,
                 inject: InjectApi | None = None, version: bool = True) -> None:
        self._checks = checks
        self._console = console  # the web console at /ui (client side, unless --console=false)
        self._inject = inject  # /debug/inject (client side, with --experimental-fault-injection)
        self._metrics = metrics
        self._figures = figures
        self._gateway = gateway
        self._cors = cors
        self._routes: dict[str, Callable[[Request], Response]] = {
            "/health": self._health, "/metrics": self._serve_metrics,
        }
        for kind in ("livez", "readyz"):
            self._install_registry(kind)
        if version:
            self._routes["/version"] = self._version

    def _install_registry(self, kind: str) -> None:
        names = sorted(self._checks.registry(kind))
        self._routes[f"/{kind}"] = lambda r: self._run_checks(r, kind, names, root=True)
        for name in names:
            self._routes[f"/{kind}/{name}"] = lambda r, n=name: self._run_checks(r, kind, [n], root=False)

    async def handle(self, request: Request) -> Response | StreamResponse:
        response = await self._route(request)
        if self._cors:
            response.headers[:0] = _CORS
        return response

    async def _route(self, request: Request) -> Response | StreamResponse:
        if self._cors and request.method == "OPTIONS":
            return Response(200)
        path = request.path
        clean = _clean_path(path)
        if clean != path:
            return _redirect(request, clean)
        if self._inject is not None and self._inject.handles(path):
            return await self._inject.handle(request)
        if self._gateway is not None:
            if path in ("/v3", "/v3beta"):
                return _redirect(request, path + "/")
            if self._gateway.handles(path):
                return await self._gateway.handle(request)
        if self._console is not None and self._console.handles(path):
            return self._console.handle(request)
        route = self._routes.get(path)
        if route is None:
            return text_response(404, "404 page not found")
        return route(request)

    # -- endpoints --------------------------------------------------------------------------
    def _health(self, request: Request) -> Response:
        if request.method != "GET":
            return _method_not_allowed()
        serializable = request.query.get("serializable", [""])[0] == "true"
        h = self._checks.health(_query_set(request, "exclude"), serializable)
        body = json.dumps({"health": "true" if h.health else "false", "reason": h.reason}, separators=(",", ":"))
        if not h.health:
            log.warning("/health error", extra={"fields": {"output": body, "status-code": 503}})
            return text_response(503, body)
        return Response(200, body.encode(), [("Content-Type", _TEXT)])

    def _run_checks(self, request: Request, kind: str, names: list[str], root: bool) -> Response:
        if request.method != "GET":
            return _method_not_allowed()
        if root:
            excluded = _query_set(request, "exclude")
            names = [n for n in names if n not in excluded]
        checks = self._checks.registry(kind)
        lines = []
        failed = False
        for name in names:
            error = checks[name]()
            if error is None:
                lines.append(f"[+]{name} ok\n")
            else:
                lines.append(f"[-]{name} failed: {error}\n")
                failed = True
        reason = "".join(lines)
        if failed:
            log.error("Health check error", extra={"fields": {"path": request.path, "reason": reason,
                                                              "status-code": 503}})
            return text_response(503, reason)
        body = (reason if "verbose" in request.query else "") + "ok\n"
        return Response(200, body.encode(), [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")])

    def _version(self, request: Request) -> Response:
        if request.method != "GET":
            return _method_not_allowed()
        body = _go_json({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION})
        return Response(200, body, [("Content-Type", "application/json")])

    def _serve_metrics(self, request: Request) -> Response:
        body = render(self._metrics, self._figures()).encode()
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in request.header("accept-encoding"):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        return Response(200, body, headers)


def _clean_path(path: str) -> str:
    """Go's ServeMux cleanPath: the canonical path, keeping a trailing slash."""
    if not path.startswith("/"):
        path = "/" + path
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def _redirect(request: Request, location: str) -> Response:
    """Go's http.Redirect with 301: a tiny HTML body for GET and HEAD only."""
    if request.method in ("GET", "HEAD"):
        body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
        return Response(301, body, [("Content-Type", "text/html; charset=utf-8"), ("Location", location)])
    return Response(301, b"", [("Location", location)])


def os_error_text(exc: OSError) -> str:
    """An OSError as Go words a syscall error: "address already in use"."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _host_port(url: str, flag: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.port is None:
        raise ConfigError(f'unexpected URL "{url}" for --{flag} (expected http(s)://host:port)')
    return parts.hostname or "0.0.0.0", parts.port, parts.scheme == "https"


TlsListen = Callable[[HttpServer, str, int], Awaitable[int]]


class HttpListeners:
    """The HTTP side of a server: the client-side handler (gateway, etcd's endpoints) and the
    metrics handler, on their listeners; ``client`` also serves connections the client-port
    multiplexer hands over.  ``start()``, ``close()``, ``wait_closed()``."""

    def __init__(self, checks: HealthChecks, metrics: ServerMetrics, gateway: Gateway | None, console: bool = True,
                 inject: InjectApi | None = None) -> None:
        self._checks = checks
        client = EtcdHttp(checks, metrics, checks.figures, gateway, cors=True, console=Console() if console else None,
                          inject=inject)
        self.client = HttpServer(client.handle, "client-http")
        self.metrics = HttpServer(EtcdHttp(checks, metrics, checks.figures, None, cors=False, version=False).handle,
                                  "metrics-http")
        self.addresses: list[tuple[str, int]] = []  # (flag, port) of every listener, in order

    async def start(self, cfg: Config, tls_listen: TlsListen) -> None:
        """Listen on --listen-client-http-urls and --listen-metrics-urls; https ones through
        ``tls_listen`` (the TLS front, which applies every TLS setting as on the client URLs)."""
        for flag, urls, server in (("listen-client-http-urls", cfg.listen_client_http_urls, self.client),
                                   ("listen-metrics-urls", cfg.listen_metrics_urls, self.metrics)):
            for url in urls:
                host, port, tls = _host_port(url, flag)
                try:
                    bound = await (tls_listen(server, host, port) if tls else server.listen(host, port))
                except OSError as exc:
                    raise ConfigError(f"listen tcp {host}:{port}: bind: {os_error_text(exc)}") from None
                self.addresses.append((flag, bound))
                log.info("serving HTTP", extra={"fields": {"flag": flag, "address": f"{host}:{bound}"}})

    def close(self) -> None:
        self._checks.stopping = True  # health checks still answering say "server stopped"
        self.client.close()
        self.metrics.close()

    async def wait_closed(self) -> None:
        await self.client.wait_closed()
        await self.metrics.wait_closed()
