"""Hearing of other instances' commits (LISTEN), and the read barrier (the log's head, batched)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

from ... import errors
from ...lifecycle import OwnedTask
from .applier import POLL_SECONDS, REQUEST_TIMEOUT, LogApplier
from .link import Link
from .schema import NOTIFY_CHANNEL

log = logging.getLogger("etcdlite.postgres")

_HEAD = ("SELECT greatest((SELECT coalesce(max(idx), 0) FROM etcdlite_log), "
         "(SELECT coalesce(max(idx), 0) FROM etcdlite_snapshot))")


class Follower:
    """LISTENs on its own connection and tells the applier each announced index."""

    def __init__(self, url: str, applier: LogApplier, instance: str = "") -> None:
        self._applier = applier
        self.link = Link(url, "listener", instance)
        self._task = OwnedTask("postgres-listen", self._run)

    def start(self) -> None:
        self._task.start()

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        await self._task.wait()
        await self.link.close()

    async def _run(self) -> None:
        while True:
            try:
                conn = await self.link.get()
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self.link.ok()
                self._applier.catch_up_soon()  # whatever was missed while not listening
                while True:
                    async for note in conn.notifies(timeout=POLL_SECONDS):
                        self._announce(note.payload)
                    await conn.execute("SELECT 1")  # a dead connection shows here, not in notifies()
            except (psycopg.Error, OSError) as exc:
                await self.link.drop(exc)

    def _announce(self, payload: str) -> None:
        try:
            self._applier.announced(int(payload))
        except ValueError:
            log.warning("ignoring a foreign notification", extra={"fields": {"payload": payload[:64]}})


class ReadIndex:
    """etcd's ReadIndex over the shared log: the head of the log, read after the call began, then
    wait until it is applied here.  Concurrent callers share one query (each waits for a query
    that started after it called)."""

    def __init__(self, url: str, applier: LogApplier, instance: str = "") -> None:
        self._applier = applier
        self.link = Link(url, "reader", instance)
        self._next: asyncio.Future[int] | None = None
        self._querying = False

    async def wait(self) -> None:
        if not self._applier.connected:
            raise errors.NO_LEADER
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if not self._querying:
                asyncio.get_running_loop().create_task(self._query_loop())
        head = await asyncio.shield(self._next)
        # a timer, not wait_for (a task for every read) nor asyncio.timeout (the engine runs a unary
        # handler outside any task until it waits)
        await self._applier.wait_index(head, REQUEST_TIMEOUT)

    async def _query_loop(self) -> None:
        self._querying = True
        try:
            while self._next is not None:
                fut, self._next = self._next, None
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        head = await self._head_retried()
                except (psycopg.Error, OSError, TimeoutError):
                    fut.set_exception(errors.NO_LEADER)
                    continue
                fut.set_result(head)
        finally:
            self._querying = False

    async def _head_retried(self) -> int:
        """The head; a connection that broke while idle (a database restart) is replaced once."""
        for attempt in range(2):
            try:
                head = await self._head()
            except (psycopg.Error, OSError) as exc:
                await self.link.drop(exc)
                if attempt:
                    raise
                continue
            self.link.ok()
            return head
        raise AssertionError("unreachable")

    async def _head(self) -> int:
        conn: psycopg.AsyncConnection[Any] = await self.link.get()
        row = await (await conn.execute(_HEAD)).fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self.link.close()
