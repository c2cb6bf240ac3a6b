"""The running server: gRPC listeners over a Node, with a clean shutdown path."""

from __future__ import annotations

import asyncio
import logging

import grpc

from .api import generic_handler
from .api.auth import AuthService
from .api.cluster import ClusterService
from .api.election import ElectionService
from .api.kv import KVService
from .api.lease import LeaseService
from .api.lock import LockService
from .api.maintenance import MaintenanceService
from .api.watch import WatchService
from .config import Config, ConfigError
from .engine import GrpcEngine
from .etcdhttp import HttpListeners, os_error_text
from .front import ClientPortMux, internal_grpc_address
from .gateway import Gateway
from .httpd import HttpServer
from .metrics import ServerMetrics
from .node import Node
from .pb.etcdserverpb import rpc_pb2
from .pb.v3electionpb import v3election_pb2
from .pb.v3lockpb import v3lock_pb2
from .tls import CertPair, ClientCertCheck, client_cert_pair, server_context
from .tlsfront import TlsFront

log = logging.getLogger("etcdlite")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _server_credentials(cfg: Config, pair: CertPair) -> grpc.ServerCredentials:
    """gRPC core's own TLS, for gRPC-only client URLs (--client-http-mux=false) that need nothing
    it lacks; client certificates required as etcd requires them (see tls.server_context)."""
    key = _read(pair.key_file, "--key-file")
    cert = _read(pair.cert_file, "--cert-file")
    ca = _read(cfg.trusted_ca_file, "--trusted-ca-file") if cfg.trusted_ca_file else None
    if cfg.client_cert_auth and ca is None:
        raise ConfigError("--client-cert-auth needs --trusted-ca-file")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=cfg.client_cert_auth or ca is not None)


def _grpc_core_tls_suffices(cfg: Config) -> bool:
    """Whether gRPC core's TLS can serve the https client URLs: gRPC only, and none of the settings
    only the TLS front honours (CRL, versions, cipher suites, allowed names)."""
    return (not cfg.client_http_mux and not cfg.client_crl_file and not cfg.cipher_suites
            and cfg.tls_min_version in ("", "TLS1.2") and not cfg.tls_max_version
            and not cfg.client_cert_allowed_hostnames and not cfg.client_cert_allowed_cns)


class EtcdServer:
    """Owns the node, its background tasks and the gRPC server: ``start()``, ``close()``, ``wait_closed()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = Node(config)
        self._grpc: GrpcEngine | None = None
        self._closed = asyncio.Event()
        self.ports: list[int] = []
        self.metrics = ServerMetrics()
        self.grpc_methods: dict[str, grpc.RpcMethodHandler] = {}  # "/etcdserverpb.KV/Range" -> handler
        self.http: HttpListeners | None = None  # the JSON gateway, /health, /metrics ... (issue 8)
        self._mux: ClientPortMux | None = None  # --client-http-mux: HTTP/1.1 beside gRPC on the client port
        self._tls: TlsFront | None = None  # https client URLs: TLS terminated in front of gRPC and HTTP

    def _services(self) -> None:
        """Every etcd method's handler, in ``grpc_methods`` under its path."""
        node = self.node
        impls = {
            "KV": KVService(node),
            "Lease": LeaseService(node),
            "Cluster": ClusterService(node),
            "Watch": WatchService(node),
            "Maintenance": MaintenanceService(node),
            "Auth": AuthService(node),
        }
        for name, service in rpc_pb2.DESCRIPTOR.services_by_name.items():
            generic_handler(service, impls.get(name), self.metrics.grpc, self.grpc_methods,
                            max_receive_bytes=self.config.grpc_max_receive_bytes)
        recipes = {"Lock": LockService(node), "Election": ElectionService(node)}
        for module in (v3lock_pb2, v3election_pb2):
            for name, service in module.DESCRIPTOR.services_by_name.items():
                generic_handler(service, recipes.get(name), self.metrics.grpc, self.grpc_methods,
                                max_receive_bytes=self.config.grpc_max_receive_bytes)
        self.metrics.wire_kv_observers()

    async def start(self) -> None:
        cfg = self.config
        await self.node.start()  # recover from the data dir before anything is served
        self._services()
        self._grpc = GrpcEngine(
            self.grpc_methods,
            options=[
                # without this a second server on the same port starts silently
                ("grpc.so_reuseport", 0),
                # etcd's limits are checked by the handlers, in etcd's words; core only stops the absurd
                ("grpc.max_receive_message_length", cfg.grpc_hard_receive_bytes),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_concurrent_streams", min(cfg.max_concurrent_streams, 2**31 - 1)),
                # etcd's keepalive policy: clients may ping every --grpc-keepalive-min-time (core's
                # default, 5 minutes, would answer a client pinging every 30 s with GOAWAY)
                ("grpc.http2.min_recv_ping_interval_without_data_ms", int(cfg.grpc_keepalive_min_time * 1000)),
                ("grpc.keepalive_time_ms", int(cfg.grpc_keepalive_interval * 1000) or 2**31 - 1),
                ("grpc.keepalive_timeout_ms", int(cfg.grpc_keepalive_timeout * 1000) or 2**31 - 1),
            ],
        )
        gateway = (Gateway(self.grpc_methods, cfg.grpc_max_receive_bytes, min(cfg.max_concurrent_streams, 2**31 - 1))
                   if cfg.enable_grpc_gateway else None)
        self.http = HttpListeners(self.node, self.metrics, gateway)
        await self._listen_client_urls()
        await self.http.start(cfg, self._tls_http_listener)
        self.node.lessor.start()
        self.node.watches.start()
        self._grpc.start()
        self._log_started_as_etcd()
        log.info("ready to serve client requests", extra={"fields": {"address": ",".join(cfg.listen_client_urls)}})

    def _log_started_as_etcd(self) -> None:
        """The lines etcd logs once its member is up; scripts and test harnesses wait for them
        (etcd's own e2e tests wait for "enabled capabilities for version" and "published")."""
        cfg, node = self.config, self.node
        log.info("published local member to cluster through raft", extra={"fields": {
            "local-member-id": f"{node.member_id:x}", "cluster-id": f"{node.cluster_id:x}", "publish-timeout": "7s",
            "local-member-attributes": f"{{Name:{cfg.name} ClientURLs:[{' '.join(cfg.advertise_client_urls)}]}}"}})
        log.info("enabled capabilities for version", extra={"fields": {"cluster-version": "3.5"}})

    async def _listen_client_urls(self) -> None:
        """Each client URL: plain http through the mux (or gRPC alone), https through the TLS front
        (or gRPC core's TLS, where that suffices); http and https on one port, as etcd's cmux serves
        them, through the TLS front, which hands plain connections to the mux."""
        cfg = self.config
        assert self._grpc is not None and self.http is not None
        pair = client_cert_pair(cfg)  # --auto-tls makes it here
        kinds: dict[str, set[bool]] = {}  # address -> its schemes (tls or not), in the URLs' order
        for address, tls in cfg.listen_addresses():
            kinds.setdefault(address, set()).add(tls)
        shared = {address for address, tls in kinds.items() if len(tls) == 2}
        core_tls = pair is not None and _grpc_core_tls_suffices(cfg) and not shared
        muxed = {address for address, tls in self._muxed_addresses()}
        path: str | None = None
        if muxed or shared or any(True in tls for tls in kinds.values()) and not core_tls:
            internal, path = internal_grpc_address()
            if self._grpc.add_port(internal) == 0:
                raise ConfigError(f"cannot listen on the internal gRPC address {internal}")
            if muxed or shared:
                self._mux = ClientPortMux(path, self.http.client)
        if pair is not None and (not core_tls or self._https_http_urls()):
            self._tls = TlsFront(server_context(cfg, pair), ClientCertCheck(cfg))
        http_beside_grpc = self.http.client if cfg.client_http_mux and not cfg.listen_client_http_urls else None
        for address, schemes in kinds.items():
            host, _, port_text = address.rpartition(":")
            host, port = host.strip("[]"), int(port_text)
            try:
                if address in shared:
                    assert self._tls is not None and self._mux is not None
                    self.ports.append(await self._tls.listen(host, port, path, http_beside_grpc, plain=self._mux.adopt))
                elif address in muxed:
                    assert self._mux is not None
                    self.ports.append(await self._mux.listen(host, port))
                elif True in schemes and not core_tls:
                    assert self._tls is not None
                    self.ports.append(await self._tls.listen(host, port, path, http_beside_grpc))
                else:
                    credentials = _server_credentials(cfg, pair) if True in schemes and pair is not None else None
                    self.ports.append(self._grpc_port(address, credentials))
            except OSError as exc:
                raise ConfigError(f"listen tcp {address}: bind: {os_error_text(exc)}") from None

    def _grpc_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        assert self._grpc is not None
        try:
            port = self._grpc.add_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"listen tcp {address}: bind: address already in use") from exc
        if port == 0:
            raise ConfigError(f"listen tcp {address}: bind: address already in use")
        return port

    def _https_http_urls(self) -> bool:
        cfg = self.config
        return any(u.startswith("https:") for u in cfg.listen_client_http_urls + cfg.listen_metrics_urls)

    async def _tls_http_listener(self, server: HttpServer, host: str, port: int) -> int:
        """An https --listen-client-http-urls / --listen-metrics-urls listener, behind the TLS front."""
        if self._tls is None:
            raise ConfigError("an https listener needs --cert-file and --key-file (or --auto-tls)")
        return await self._tls.listen(host, port, None, server)

    def _muxed_addresses(self) -> list[tuple[str, bool]]:
        """The client addresses the front listener takes (plain http ones, with --client-http-mux
        and no --listen-client-http-urls, which like etcd's makes the client port gRPC only)."""
        cfg = self.config
        if not cfg.client_http_mux or cfg.listen_client_http_urls:
            return []
        return [(address, tls) for address, tls in cfg.listen_addresses() if not tls]

    def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        # HTTP first: its gateway calls (watches included) end with their connections
        if self.http is not None:
            self.http.close()
        if self._mux is not None:
            self._mux.close()
        if self._tls is not None:
            self._tls.close()
        # watch streams never end by themselves: end them first so the grace period is not spent on them
        self.node.watches.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._mux is not None:
            self._mux.abort_connections()
            await self._mux.wait_closed()
        if self._tls is not None:
            self._tls.abort_connections()
            await self._tls.wait_closed()
        if self.http is not None:
            await self.http.wait_closed()
        await self.node.watches.wait_closed()
        self.node.lessor.close()
        await self.node.lessor.wait_closed()
        self.node.close()  # flushes the log: what was acknowledged is on disk
        await self.node.wait_closed()

    async def serve_until_closed(self) -> None:
        await self.start()
        await self.wait_closed()
