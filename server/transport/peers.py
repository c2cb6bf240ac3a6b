"""Who is behind a connection the TLS front relays to gRPC.

The TLS front (``tlsfront.py``) terminates TLS itself and connects each gRPC connection to gRPC
core's internal listener from an abstract unix address of its own, so gRPC core sees a plain
connection whose peer is ``unix-abstract:<name>``.  The front keeps the verified client
certificate under that name while the connection lives, and a call's ``auth_context()``
(``call.py``) reads it from here as gRPC core's own TLS would have given it: the api layer
(``api/credentials.py``) cannot tell the two apart.  Written by the TLS front's thread, read on
the event loop (single dict operations, atomic under the GIL).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

PREFIX = "unix-abstract:"


class RelayedPeers:
    def __init__(self) -> None:
        self._by_peer: dict[str, dict[str, list[bytes]]] = {}

    def add(self, name: str, common_name: str, der: bytes) -> None:
        """The connection relayed from abstract address ``name`` presented this verified certificate."""
        self._by_peer[PREFIX + name] = {
            "transport_security_type": [b"ssl"],
            "x509_common_name": [common_name.encode()],
            "x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()],
        }

    def remove(self, name: str) -> None:
        self._by_peer.pop(PREFIX + name, None)

    def auth_context(self, peer: str) -> Mapping[str, list[bytes]] | None:
        """The certificate properties of a relayed connection (by the call's ``peer()``), if it sent one."""
        if not peer.startswith(PREFIX):
            return None
        return self._by_peer.get(peer)

    def __len__(self) -> int:
        return len(self._by_peer)


PEERS = RelayedPeers()
