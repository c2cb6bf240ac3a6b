"""pytest plugin (registered by entry point): fixtures that give a test a running etcdlite.

``etcd``          a fresh server for one test
``etcd_session``  one server shared by the whole session
``etcd_faults``   a fresh server with fault injection on, for one test

Each is an ``EtcdFixture``: ``endpoint`` (``http://127.0.0.1:PORT``), ``host``,
``port``, and ``client()`` which returns an ``etcd3`` client when that package
is installed.  On ``etcd_faults``, ``inject(...)``, ``faults()`` and
``clear_faults()`` set, list and clear faults (``etcdlite.Server.inject``):

    def test_put_retries(etcd_faults):
        etcd_faults.inject("error", methods="KV/Put", error="leader-changed", count=2)
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .process import Server


@dataclass
class EtcdFixture:
    server: Server

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, **kwargs: Any) -> Any:
        import etcd3  # the user's client library, imported only when asked for

        return etcd3.client(host=self.host, port=self.port, **kwargs)

    def inject(self, fault: str, **params: Any) -> dict[str, Any]:
        """Set a fault (the server must have fault injection on: the ``etcd_faults`` fixture)."""
        return self.server.inject(fault, **params)

    def faults(self) -> list[dict[str, Any]]:
        return self.server.faults()

    def clear_faults(self) -> int:
        return self.server.clear_faults()


@pytest.fixture
def etcd() -> Iterator[EtcdFixture]:
    with Server() as server:
        yield EtcdFixture(server)


@pytest.fixture(scope="session")
def etcd_session() -> Iterator[EtcdFixture]:
    with Server() as server:
        yield EtcdFixture(server)


@pytest.fixture
def etcd_faults() -> Iterator[EtcdFixture]:
    with Server(fault_injection=True) as server:
        yield EtcdFixture(server)
