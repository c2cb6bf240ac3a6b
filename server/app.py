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
from .metrics import ServerMetrics
from .node import Node
from .pb.etcdserverpb import rpc_pb2
from .pb.v3electionpb import v3election_pb2
from .pb.v3lockpb import v3lock_pb2

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
                            max_receive_bytes=self.config.grpc_max_receive_bytes,
                            max_txn_ops=self.config.max_txn_ops)
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
                ("grpc.max_concurrent_streams", 2**31 - 1),
                # grpc-go's (so etcd's) limit on a request's metadata, 16 MiB, not core's 8/16 KiB
                ("grpc.max_metadata_size", GRPC_GO_MAX_HEADER_LIST_SIZE),
                ("grpc.absolute_max_metadata_size", GRPC_GO_MAX_HEADER_LIST_SIZE),
            ],
        )
        credentials = _server_credentials(cfg)
        self.http = HttpListeners(self.node, self.metrics, Gateway(self.grpc_methods, cfg.grpc_max_receive_bytes))
        muxed = self._muxed_addresses()
        if muxed:
            internal, path = internal_grpc_address()
            if self._grpc.add_port(internal) == 0:
                raise ConfigError(f"cannot listen on the internal gRPC address {internal}")
            self._mux = ClientPortMux(path, self.http.client)
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
        self.node.lessor.start()
        self.node.watches.start()
        self._grpc.start()
        log.info("ready to serve client requests", extra={"fields": {"address": ",".join(cfg.listen_client_urls)}})

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
        # watch streams never end by themselves: end them first so the grace period is not spent on them
        self.node.watches.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._mux is not None:
            self._mux.abort_connections()
            await self._mux.wait_closed()
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
