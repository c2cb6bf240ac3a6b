"""The running server: gRPC listeners over a Node, with a clean shutdown path."""

from __future__ import annotations

import asyncio
import logging

import grpc

from .api import generic_handler
from .api.cluster import ClusterService
from .api.kv import KVService
from .api.lease import LeaseService
from .config import Config, ConfigError
from .node import Node
from .pb.etcdserverpb import rpc_pb2
from .pb.v3electionpb import v3election_pb2
from .pb.v3lockpb import v3lock_pb2

log = logging.getLogger("etcdlite")


class EtcdServer:
    """Owns the node, its background tasks and the gRPC server: ``start()``, ``close()``, ``wait_closed()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = Node(config)
        self._grpc: grpc.aio.Server | None = None
        self._closed = asyncio.Event()
        self.ports: list[int] = []

    def _services(self) -> list[grpc.GenericRpcHandler]:
        node = self.node
        impls = {
            "KV": KVService(node),
            "Lease": LeaseService(node),
            "Cluster": ClusterService(node),
        }
        handlers = []
        for name, service in rpc_pb2.DESCRIPTOR.services_by_name.items():
            handlers.append(generic_handler(service, impls.get(name)))
        for module in (v3lock_pb2, v3election_pb2):
            for service in module.DESCRIPTOR.services_by_name.values():
                handlers.append(generic_handler(service, None))
        return handlers

    async def start(self) -> None:
        cfg = self.config
        self._grpc = grpc.aio.server(
            options=[
                # without this a second server on the same port starts silently
                ("grpc.so_reuseport", 0),
                # let etcd's own "request is too large" be what an oversized request hits
                ("grpc.max_receive_message_length", cfg.grpc_max_receive_bytes),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_concurrent_streams", 2**31 - 1),
            ],
        )
        self._grpc.add_generic_rpc_handlers(self._services())
        for address in cfg.listen_addresses():
            try:
                port = self._grpc.add_insecure_port(address)
            except RuntimeError as exc:
                raise ConfigError(f"listen tcp {address}: bind: address already in use ({exc})") from None
            if port == 0:
                raise ConfigError(f"listen tcp {address}: bind: address already in use")
            self.ports.append(port)
        self.node.lessor.start()
        await self._grpc.start()
        log.info("ready to serve client requests", extra={"fields": {"address": ",".join(cfg.listen_client_urls)}})

    def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        self.node.lessor.close()
        await self.node.lessor.wait_closed()

    async def serve_until_closed(self) -> None:
        await self.start()
        await self.wait_closed()
