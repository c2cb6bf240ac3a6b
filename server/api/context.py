"""What a servicer may use of its call: the one context protocol the gRPC engine's calls and the
HTTP gateway's calls both implement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class CallContext(Protocol):
    def invocation_metadata(self) -> Sequence[tuple[str, Any]]:
        """The request's metadata (gRPC headers; the gateway's forwarded HTTP headers)."""
        ...

    def auth_context(self) -> Mapping[str, Any]:
        """The TLS peer's verified identity (``x509_common_name`` ...); empty without one."""
        ...

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline; None without one."""
        ...

    async def write(self, message: Any) -> None:
        """Send one response of a streaming call."""
        ...
