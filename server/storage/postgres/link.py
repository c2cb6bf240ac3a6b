"""One connection to the database that comes back by itself: opened on first use, dropped on error."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from .dsn import connect_kwargs, redacted

log = logging.getLogger("etcdlite.postgres")

RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 1.0


class Link:
    """``await link.get()`` is an open autocommit connection; ``drop()`` after an error closes it,
    and the next ``get()`` reconnects, no sooner than the back-off allows."""

    def __init__(self, url: str, purpose: str, instance: str = "") -> None:
        self._url = url
        self.purpose = purpose
        self._application = f"etcdlite {instance} {purpose}" if instance else f"etcdlite {purpose}"
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_SECONDS
        self.down_since: float | None = None  # monotonic time of the failure, while it lasts
        self._failures = 0  # drops since the last success

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def get(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        delay = self._retry_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                         **connect_kwargs(self._application))
        except psycopg.Error as exc:
            self._failed(exc)
            raise
        if self.down_since is not None:
            log.info("reconnected to the database", extra={"fields": {
                "connection": self.purpose, "down-seconds": round(time.monotonic() - self.down_since, 3)}})
        self._conn = conn
        self._backoff = RETRY_MIN_SECONDS
        self.down_since = None
        return conn

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning("lost the database", extra={"fields": {
                "connection": self.purpose, "url": redacted(self._url), "error": str(exc).strip()}})
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_SECONDS)

    async def drop(self, exc: BaseException) -> None:
        """The connection failed (or may be in an unknown state): close it; ``get`` reconnects.

        The first failure after a success is retried at once (a connection that broke while idle,
        as after a database restart, says nothing of the database now); a repeated one backs off and
        counts as the database being out of reach."""
        conn, self._conn = self._conn, None
        self._failures += 1
        if self._failures > 1:
            self._failed(exc)
        if conn is not None and not conn.closed:
            await _close_quietly(conn)

    def ok(self) -> None:
        """The last operation on the connection succeeded."""
        self._failures = 0

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn)


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await asyncio.wait_for(conn.close(), 1.0)
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass
