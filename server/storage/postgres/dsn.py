"""``--backend postgres://...``: the URL, how connections are opened, what may be logged of it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgres", "postgresql")
CONNECT_TIMEOUT_SECONDS = 5
# a database host that vanishes without closing the connection is noticed within ~10 s
_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def connect_kwargs(application_name: str) -> dict[str, Any]:
    """Options every connection gets (they override the same parameters in the URL)."""
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": application_name[:63], **_KEEPALIVES}
