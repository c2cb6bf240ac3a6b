"""The running server: the four layers wired together, with a clean shutdown path.

storage (the backend) <- core (``Core``: the request pipeline) <- api (thin servicers) <- transport
(the gRPC engine, the client-port mux, the HTTP listeners and the JSON gateway).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from .api.auth import AuthService
from .api.cluster import ClusterService
from .api.credentials import CredentialsReader, TokenCatchUp
from .api.election import ElectionService
from .api.health import HealthChecks
from .api.kv import KVService
from .api.lease import LeaseService
from .api.lock import LockService
from .api.maintenance import MaintenanceService
from .api.watch import WatchService
from .config import Config, ConfigError
from .core.auth.admin import AuthAdmin
from .core.cluster import Cluster
from .core.faults import FaultInjector
from .core.maintenance import Maintenance
from .core.server import Core
from .pb.etcdserverpb import rpc_pb2
from .pb.v3electionpb import v3election_pb2
from .pb.v3lockpb import v3lock_pb2
from .storage.backend import Backend
from .storage.memory.backend import MemoryBackend
from .storage.memory.files import DiskFaults
from .storage.memory.writer import WALOptions
from .transport.console import console_urls
from .transport.engine import GrpcEngine
from .transport.etcdhttp import HttpListeners, os_error_text
from .transport.front import ClientPortMux, ConnectionBudget, internal_grpc_address
from .transport.gateway import Gateway
from .transport.httpd import HttpServer
from .transport.inject import InjectApi
from .transport.metrics import ServerMetrics
from .transport.rpc import generic_handler
from .transport.splice import RelayError

if TYPE_CHECKING:  # TLS (cryptography's x509) is loaded only where a URL is https (idle memory)
    from .transport.tls import CertPair
    from .transport.tlsfront import TlsFront

log = logging.getLogger("etcdlite")

GRPC_GO_MAX_HEADER_LIST_SIZE = 16 << 20  # grpc-go's defaultServerMaxHeaderListSize


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


def _client_cert_pair(cfg: Config) -> CertPair | None:
    """The https URLs' certificate (tls.client_cert_pair); None where no URL is https and no
    --auto-tls asks for one (etcd makes it then too)."""
    urls = cfg.listen_client_urls + cfg.listen_client_http_urls + cfg.listen_metrics_urls
    if not cfg.auto_tls and not any(url.startswith("https:") for url in urls):
        return None
    from .transport.tls import client_cert_pair

    return client_cert_pair(cfg)


def _grpc_core_tls_suffices(cfg: Config) -> bool:
    """Whether gRPC core's TLS can serve the https client URLs: gRPC only, and none of the settings
    only the TLS front honours (CRL, versions, cipher suites, allowed names)."""
    return (not cfg.client_http_mux and not cfg.client_crl_file and not cfg.cipher_suites
            and cfg.tls_min_version in ("", "TLS1.2") and not cfg.tls_max_version
            and not cfg.client_cert_allowed_hostnames and not cfg.client_cert_allowed_cns)


def open_backend(cfg: Config) -> Backend:
    """The storage the flags ask for: the embedded store in ``--data-dir``, or a PostgreSQL database
    shared by several instances (``--backend postgres://...``)."""
    if cfg.backend:
        try:
            from .storage.postgres.backend import PostgresBackend
        except ImportError as exc:  # psycopg is an optional dependency
            raise ConfigError(f"--backend {cfg.backend.split(':', 1)[0]}:// needs psycopg "
                              f"(pip install 'etcdlite[postgres]'): {exc}") from None
        return PostgresBackend(cfg.backend, cfg)
    options = WALOptions(fsync=not cfg.unsafe_no_fsync, snapshot_count=cfg.snapshot_count or 100_000,
                         batch_limit=max(cfg.backend_batch_limit, 0), faults=DiskFaults.from_env())
    return MemoryBackend(cfg.data_dir, options)


class EtcdServer:
    """Owns the core, its background tasks and the gRPC server: ``start()``, ``close()``, ``wait_closed()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.core = Core(config, open_backend(config))
        self.core.on_removed = self.close  # a removed member stops serving, as etcd's does
        self._grpc: GrpcEngine | None = None
        self._closed = asyncio.Event()
        self.ports: list[int] = []
        self.metrics = ServerMetrics()
        self.grpc_methods: dict[str, grpc.RpcMethodHandler] = {}  # "/etcdserverpb.KV/Range" -> handler
        self.http: HttpListeners | None = None  # the JSON gateway, /health, /metrics ... (issue 8)
        self._mux: ClientPortMux | None = None  # --client-http-mux: HTTP/1.1 beside gRPC on the client port
        self._tls: TlsFront | None = None  # https client URLs: TLS terminated in front of gRPC and HTTP
        self._budget: ConnectionBudget | None = None  # the descriptors both hold, against RLIMIT_NOFILE
        # --experimental-fault-injection: the faults the guards inject, set over /debug/inject
        self.faults = FaultInjector(self.core) if config.fault_injection else None

    def _services(self) -> None:
        """Every etcd method's handler, in ``grpc_methods`` under its path."""
        core = self.core
        who = CredentialsReader(self.config.client_cert_auth)
        # over a shared backend a token issued elsewhere may come before its log entry was applied here
        gate = TokenCatchUp(who, core.auth, core.backend) if core.backend.shared_state is not None else None
        impls = {
            "KV": KVService(core, who),
            "Lease": LeaseService(core, who),
            "Cluster": ClusterService(Cluster(core), who),
            "Watch": WatchService(core, who),
            "Maintenance": MaintenanceService(Maintenance(core), who),
            "Auth": AuthService(AuthAdmin(core), who),
        }
        for name, service in rpc_pb2.DESCRIPTOR.services_by_name.items():
            generic_handler(service, impls.get(name), self.metrics.grpc, self.grpc_methods,
                            max_receive_bytes=self.config.grpc_max_receive_bytes, faults=self.faults,
                            max_txn_ops=self.config.max_txn_ops, gate=gate)
        recipes = {"Lock": LockService(core, who), "Election": ElectionService(core, who)}
        for module in (v3lock_pb2, v3election_pb2):
            for name, service in module.DESCRIPTOR.services_by_name.items():
                generic_handler(service, recipes.get(name), self.metrics.grpc, self.grpc_methods,
                                max_receive_bytes=self.config.grpc_max_receive_bytes, faults=self.faults, gate=gate)
        self.metrics.wire_kv_observers()
        if self.faults is not None:  # "/etcdserverpb.KV/Range" -> "KV/Range"
            self.faults.set_methods(path.rpartition(".")[2] for path in self.grpc_methods)

    async def start(self) -> None:
        cfg = self.config
        self.core.open()  # recover from the data dir before anything is served
        self._services()
        self._grpc = GrpcEngine(
            self.grpc_methods,
            options=[
                # without this a second server on the same port starts silently
                ("grpc.so_reuseport", 0),
                # etcd's gRPC receive limit, refused by core at the message's length prefix, before
                # the message is buffered (the client-port relay gives the refusal grpc-go's words)
                ("grpc.max_receive_message_length", cfg.grpc_max_receive_bytes),
                ("grpc.http.tarpit", 0),  # grpc-go answers a refused call at once, not 0.1-1 s later
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_concurrent_streams", min(cfg.max_concurrent_streams, 2**31 - 1)),
                # etcd's keepalive policy: clients may ping every --grpc-keepalive-min-time (core's
                # default, 5 minutes, would answer a client pinging every 30 s with GOAWAY)
                ("grpc.http2.min_recv_ping_interval_without_data_ms", int(cfg.grpc_keepalive_min_time * 1000)),
                ("grpc.keepalive_time_ms", int(cfg.grpc_keepalive_interval * 1000) or 2**31 - 1),
                ("grpc.keepalive_timeout_ms", int(cfg.grpc_keepalive_timeout * 1000) or 2**31 - 1),
                # grpc-go's (so etcd's) limit on a request's metadata, 16 MiB, not core's 8/16 KiB
                ("grpc.max_metadata_size", GRPC_GO_MAX_HEADER_LIST_SIZE),
                ("grpc.absolute_max_metadata_size", GRPC_GO_MAX_HEADER_LIST_SIZE),
            ],
        )
        checks = HealthChecks(self.core, self.metrics.health)
        inject = InjectApi(self.faults) if self.faults is not None else None
        gateway = (Gateway(self.grpc_methods, cfg.grpc_max_receive_bytes, min(cfg.max_concurrent_streams, 2**31 - 1))
                   if cfg.enable_grpc_gateway else None)
        self.http = HttpListeners(checks, self.metrics, gateway, console=cfg.console, inject=inject)
        muxed = await self._listen_client_urls()
        await self.http.start(cfg, self._tls_http_listener)
        if self.faults is not None:
            log.warning("fault injection is on (--experimental-fault-injection): /debug/inject on the client HTTP side")
        await self.core.start()
        self._grpc.start()
        self._log_started_as_etcd()
        log.info("ready to serve client requests", extra={"fields": {"address": ",".join(cfg.listen_client_urls)}})
        if cfg.console:
            urls = console_urls([f"http://{address}" for address in muxed] + cfg.listen_client_http_urls)
            if urls:
                log.info("serving the web console", extra={"fields": {"urls": urls}})

    def _log_started_as_etcd(self) -> None:
        """The lines etcd logs once its member is up; scripts and test harnesses wait for them
        (etcd's own e2e tests wait for "enabled capabilities for version" and "published")."""
        cfg, core = self.config, self.core
        log.info("published local member to cluster through raft", extra={"fields": {
            "local-member-id": f"{core.member_id:x}", "cluster-id": f"{core.cluster_id:x}", "publish-timeout": "7s",
            "local-member-attributes": f"{{Name:{cfg.name} ClientURLs:[{' '.join(cfg.advertise_client_urls)}]}}"}})
        log.info("enabled capabilities for version", extra={"fields": {"cluster-version": "3.5"}})

    async def _listen_client_urls(self) -> list[str]:
        """Each client URL: plain http through the mux (or gRPC alone), https through the TLS front
        (or gRPC core's TLS, where that suffices); http and https on one port, as etcd's cmux serves
        them, through the TLS front, which hands plain connections to the mux.  Returns the plain
        addresses that serve HTTP beside gRPC."""
        cfg = self.config
        assert self._grpc is not None and self.http is not None
        pair = _client_cert_pair(cfg)  # --auto-tls makes it here
        kinds: dict[str, set[bool]] = {}  # address -> its schemes (tls or not), in the URLs' order
        for address, tls in cfg.listen_addresses():
            kinds.setdefault(address, set()).add(tls)
        shared = {address for address, tls in kinds.items() if len(tls) == 2}
        core_tls = pair is not None and _grpc_core_tls_suffices(cfg) and not shared
        muxed = {address for address, _ in self._muxed_addresses()} - shared
        grpc_path: str | None = None
        if muxed or shared or any(True in tls for tls in kinds.values()) and not core_tls:
            internal, name = internal_grpc_address()
            if self._grpc.add_port(internal) == 0:
                raise ConfigError(f"cannot listen on the internal gRPC address {internal}")
            grpc_path = "\0" + name
            self._budget = ConnectionBudget()
            if muxed or shared:
                self._mux = ClientPortMux(name, self.http.client, self._budget)
                try:
                    await self._mux.start()
                except RelayError as exc:
                    raise ConfigError(str(exc)) from None
        if pair is not None and (not core_tls or self._https_http_urls()):
            self._budget = self._budget or ConnectionBudget()
            from .transport.tls import ClientCertCheck, server_context
            from .transport.tlsfront import TlsFront

            self._tls = TlsFront(server_context(cfg, pair), ClientCertCheck(cfg), self._budget)
        http_beside_grpc = self.http.client if cfg.client_http_mux and not cfg.listen_client_http_urls else None
        for address, schemes in kinds.items():
            host, _, port_text = address.rpartition(":")
            host, port = host.strip("[]"), int(port_text)
            try:
                if address in shared:
                    assert self._tls is not None and self._mux is not None
                    self.ports.append(await self._tls.listen(host, port, grpc_path, http_beside_grpc,
                                                             plain=self._mux.adopt))
                elif address in muxed:
                    assert self._mux is not None
                    self.ports.append(await self._mux.listen(host, port))
                elif True in schemes and not core_tls:
                    assert self._tls is not None
                    self.ports.append(await self._tls.listen(host, port, grpc_path, http_beside_grpc))
                else:
                    credentials = _server_credentials(cfg, pair) if True in schemes and pair is not None else None
                    self.ports.append(self._grpc_port(address, credentials))
            except OSError as exc:
                raise ConfigError(f"listen tcp {address}: bind: {os_error_text(exc)}") from None
        return [address for address in kinds
                if address in muxed or address in shared and http_beside_grpc is not None]

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
        if self.faults is not None and self.faults.active:
            self.faults.clear()  # paused requests proceed rather than hold the shutdown
        # HTTP first: its gateway calls (watches included) end with their connections
        if self.http is not None:
            self.http.close()
        if self._mux is not None:
            self._mux.close()
        if self._tls is not None:
            self._tls.close()
        # watch streams never end by themselves: end them first so the grace period is not spent on them
        self.core.end_watches()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._mux is not None:
            self._mux.abort_connections()
            await self._mux.wait_closed()
        if self._tls is not None:
            self._tls.abort_connections()
            await self._tls.wait_closed()
        if self._budget is not None:
            self._budget.refusals.close()
        if self.http is not None:
            await self.http.wait_closed()
        self.core.close()  # flushes the log: what was acknowledged is on disk
        await self.core.wait_closed()
