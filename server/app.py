"""The running server: the four layers wired together, with a clean shutdown path.

storage (the backend) <- core (``Core``: the request pipeline) <- api (thin servicers) <- transport
(the gRPC engine, the client-port mux, the HTTP listeners and the JSON gateway).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from .api.auth import AuthService
from .api.cluster import ClusterService
from .api.credentials import CredentialsReader
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
from .transport.front import ClientPortMux, internal_grpc_address
from .transport.gateway import Gateway
from .transport.inject import InjectApi
from .transport.metrics import ServerMetrics
from .transport.rpc import generic_handler
from .transport.splice import RelayError

log = logging.getLogger("etcdlite")

GRPC_GO_MAX_HEADER_LIST_SIZE = 16 << 20  # grpc-go's defaultServerMaxHeaderListSize


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _server_credentials(cfg: Config) -> grpc.ServerCredentials | None:
    """TLS from --cert-file/--key-file; --client-cert-auth requires client certs signed by --trusted-ca-file."""
    if not (cfg.cert_file and cfg.key_file):
        return None
    key = _read(cfg.key_file, "--key-file")
    cert = _read(cfg.cert_file, "--cert-file")
    ca = _read(cfg.trusted_ca_file, "--trusted-ca-file") if cfg.trusted_ca_file else None
    if cfg.client_cert_auth and ca is None:
        raise ConfigError("--client-cert-auth needs --trusted-ca-file")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=cfg.client_cert_auth)


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
        # --experimental-fault-injection: the faults the guards inject, set over /debug/inject
        self.faults = FaultInjector(self.core) if config.fault_injection else None

    def _services(self) -> None:
        """Every etcd method's handler, in ``grpc_methods`` under its path."""
        core = self.core
        who = CredentialsReader(self.config.client_cert_auth)
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
                            max_txn_ops=self.config.max_txn_ops)
        recipes = {"Lock": LockService(core, who), "Election": ElectionService(core, who)}
        for module in (v3lock_pb2, v3election_pb2):
            for name, service in module.DESCRIPTOR.services_by_name.items():
                generic_handler(service, recipes.get(name), self.metrics.grpc, self.grpc_methods,
                                max_receive_bytes=self.config.grpc_max_receive_bytes, faults=self.faults)
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
                ("grpc.max_concurrent_streams", 2**31 - 1),
                # grpc-go's (so etcd's) limit on a request's metadata, 16 MiB, not core's 8/16 KiB
                ("grpc.max_metadata_size", GRPC_GO_MAX_HEADER_LIST_SIZE),
                ("grpc.absolute_max_metadata_size", GRPC_GO_MAX_HEADER_LIST_SIZE),
            ],
        )
        credentials = _server_credentials(cfg)
        checks = HealthChecks(self.core, self.metrics.health)
        inject = InjectApi(self.faults) if self.faults is not None else None
        self.http = HttpListeners(checks, self.metrics, Gateway(self.grpc_methods, cfg.grpc_max_receive_bytes),
                                  console=cfg.console, inject=inject)
        muxed = self._muxed_addresses()
        if muxed:
            internal, name = internal_grpc_address()
            if self._grpc.add_port(internal) == 0:
                raise ConfigError(f"cannot listen on the internal gRPC address {internal}")
            self._mux = ClientPortMux(name, self.http.client)
            try:
                await self._mux.start()
            except RelayError as exc:
                raise ConfigError(str(exc)) from None
        for address, tls in cfg.listen_addresses():
            if (address, tls) in muxed:
                assert self._mux is not None
                host, _, port_text = address.rpartition(":")
                try:
                    self.ports.append(await self._mux.listen(host.strip("[]"), int(port_text)))
                except OSError as exc:
                    raise ConfigError(f"listen tcp {address}: bind: {os_error_text(exc)}") from None
                continue
            try:
                port = self._grpc.add_port(address, credentials if tls else None)
            except RuntimeError as exc:
                raise ConfigError(f"listen tcp {address}: bind: address already in use") from exc
            if port == 0:
                raise ConfigError(f"listen tcp {address}: bind: address already in use")
            self.ports.append(port)
        await self.http.start(cfg)
        if self.faults is not None:
            log.warning("fault injection is on (--experimental-fault-injection): /debug/inject on the client HTTP side")
        await self.core.start()
        self._grpc.start()
        log.info("ready to serve client requests", extra={"fields": {"address": ",".join(cfg.listen_client_urls)}})
        if cfg.console:
            urls = console_urls([f"http://{address}" for address, _ in muxed] + cfg.listen_client_http_urls)
            if urls:
                log.info("serving the web console", extra={"fields": {"urls": urls}})

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
        # watch streams never end by themselves: end them first so the grace period is not spent on them
        self.core.end_watches()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._mux is not None:
            self._mux.abort_connections()
            await self._mux.wait_closed()
        if self.http is not None:
            await self.http.wait_closed()
        self.core.close()  # flushes the log: what was acknowledged is on disk
        await self.core.wait_closed()
