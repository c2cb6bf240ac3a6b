"""What each instance keeps up besides the log, on one connection of its own.

* **Keep-alives**: renewals made here are flushed to ``etcdlite_lease.expires_at`` every
  ``TICK_SECONDS`` (in the database's clock, less the time they waited), and the renewals made
  through other instances are read back so this lessor's TTLs stay current.
* **The reaper**: one instance among the live ones holds ``REAPER_LOCK``, a session-level advisory
  lock that dies with its connection (and so with its instance); it revokes the leases whose
  ``expires_at`` passed, through the log like any write.  The others try to take the lock every tick,
  so a dead reaper is replaced within a second.  The holder is the cluster's "leader" in Status.
  MoveLeader hands it over: the holder names the transferee in ``etcdlite_cluster`` and lets the lock
  go; until ``HANDOFF_SECONDS`` have passed only the transferee may take it.
  While it holds the lock it notes the time in ``etcdlite_cluster.reaped_at`` with each heartbeat. A new
  holder that finds that note older than ``RESUME_AFTER_SECONDS`` (every instance was down, or none could
  reach the database) first gives every lease its full TTL again, as etcd's lessor does when a member
  becomes leader (``Promote``): nobody could keep them alive meanwhile.  A reaper replaced within a
  second or two resumes where the last one stopped, since every keep-alive is already in the table.
* **Membership**: the instance's row in ``etcdlite_member`` (its member attributes and a heartbeat
  every second) and the live ones (heartbeat within ``LIVE_SECONDS``).  A session lock per member ID
  keeps two instances from serving as one member.
* **Size**: the tables' bytes on disk (etcd's dbSize), read every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ... import errors
from ...lifecycle import OwnedTask
from ..backend import Instance, LeaseAttacher
from .link import Link
from .schema import MEMBER_LOCK_SPACE, REAPER_LOCK, to_signed, to_unsigned

log = logging.getLogger("etcdlite.postgres")

TICK_SECONDS = 0.1  # keep-alives flushed, expired leases looked for (by the reaper)
PULL_SECONDS = 0.25  # other instances' keep-alives read back; the reaper lock tried by the others
HEARTBEAT_SECONDS = 1.0
LIVE_SECONDS = 5.0
PULL_WINDOW_SECONDS = 2.0  # renewals are read back over this window (their transactions are short)
SIZE_SECONDS = 5.0
REVOKE_RETRY_SECONDS = 1.0
HANDOFF_SECONDS = 3.0  # how long the lock waits for the transferee; then any live instance may take it
# longer than a reaper's replacement takes (its last note up to a heartbeat old, the lock tried every PULL_SECONDS)
RESUME_AFTER_SECONDS = 3.0
TABLES = ("etcdlite_log", "etcdlite_snapshot", "etcdlite_snapshot_chunk", "etcdlite_state", "etcdlite_lease",
          "etcdlite_member", "etcdlite_cluster")

_FLUSH = ("UPDATE etcdlite_lease AS l SET expires_at = clock_timestamp() + v.s * interval '1 second', "
          "renewed_at = clock_timestamp() FROM unnest(%s::bigint[], %s::float8[]) AS v(i, s) WHERE l.id = v.i")
_PULL = ("SELECT clock_timestamp(), coalesce(array_agg(id), '{}'), "
         "coalesce(array_agg(extract(epoch FROM expires_at - clock_timestamp())::float8), '{}') "
         "FROM etcdlite_lease "
         "WHERE renewed_at > coalesce(%s::timestamptz, clock_timestamp()) - %s * interval '1 second'")
# the lock is tried only when it is not being handed to another instance (CASE: not even tried then)
_TRY_LEAD = ("SELECT CASE WHEN transferee IS NULL OR transferee = %s OR transfer_until < clock_timestamp() "
             "THEN pg_try_advisory_lock(%s) ELSE false END, leader FROM etcdlite_cluster WHERE id = 1")
_LED = ("UPDATE etcdlite_cluster SET leader = %s, transferee = NULL, transfer_until = NULL, "
        "reaped_at = clock_timestamp() WHERE id = 1")
_REAPING = "UPDATE etcdlite_cluster SET reaped_at = clock_timestamp() WHERE id = 1"
# every lease's full TTL again if no reaper was at work lately (restored ones, at 'infinity', wait for their start)
_RESUME = ("UPDATE etcdlite_lease SET expires_at = greatest(expires_at, clock_timestamp() + ttl * interval '1 second'), "
           "renewed_at = clock_timestamp() WHERE expires_at <> 'infinity' AND (SELECT reaped_at IS NULL OR "
           "reaped_at < clock_timestamp() - %s * interval '1 second' FROM etcdlite_cluster WHERE id = 1)")
_HAND_OVER = ("UPDATE etcdlite_cluster SET transferee = %s, "
              "transfer_until = clock_timestamp() + %s * interval '1 second' WHERE id = 1")
_EXPIRED = "SELECT id FROM etcdlite_lease WHERE expires_at <= clock_timestamp() ORDER BY expires_at LIMIT 256"
HEARTBEAT = ("INSERT INTO etcdlite_member (id, name, peer_urls, client_urls, heartbeat) "
              "VALUES (%s, %s, %s, %s, clock_timestamp()) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
              "peer_urls = EXCLUDED.peer_urls, client_urls = EXCLUDED.client_urls, heartbeat = clock_timestamp()")
_LIVE = ("SELECT id, name, peer_urls, client_urls FROM etcdlite_member "
         "WHERE heartbeat > clock_timestamp() - %s * interval '1 second' ORDER BY id")
_SIZE = "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(%s::text[]) AS t"


class Keeper:
    def __init__(self, url: str, local: Instance) -> None:
        self.link = Link(url, "keeper", local.name)
        self._local = local
        self.attacher: LeaseAttacher | None = None
        self.revoke: Callable[[int], None] | None = None
        self._renewed: dict[int, tuple[float, int]] = {}  # lease id -> (monotonic time of the renewal, TTL)
        self._pulled_at: Any = None  # the database's clock at the last read of renewals
        self._revoking: dict[int, float] = {}  # lease id -> when its revoke was asked for
        self.leader = False  # holds REAPER_LOCK
        self.leader_id = 0
        self._transferee = 0  # MoveLeader asked to hand the reaper lock to this member
        self._member_locked = False
        self.instances: list[Instance] = [local]
        self.size = 0
        self._next_heartbeat = 0.0
        self._next_pull = 0.0
        self._member_lock_warned = False
        self._next_size = 0.0
        self._task = OwnedTask("postgres-keeper", self._run)

    def renewed(self, lease_id: int, ttl: int) -> None:
        self._renewed[lease_id] = (time.monotonic(), ttl)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task.start()

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        await self._task.wait()
        try:
            if self.link.connected:
                conn = await self.link.get()
                await self._flush(conn)
                # gone at once from member list (the locks go with the connection)
                await conn.execute("DELETE FROM etcdlite_member WHERE id = %s", (to_signed(self._local.id),))
        except (psycopg.Error, OSError):
            pass
        await self.link.close()

    async def _run(self) -> None:
        while True:
            try:
                conn = await self.link.get()
                await self._tick(conn)
                self.link.ok()
            except (psycopg.Error, OSError) as exc:
                self._lost()
                await self.link.drop(exc)
                continue
            await asyncio.sleep(TICK_SECONDS)

    def _lost(self) -> None:
        if self.leader:
            log.warning("no longer the lease reaper (lost the database)")
        self.leader = False
        self._member_locked = False

    async def _tick(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        if not self._member_locked:
            self._member_locked = await self._lock_member(conn)
        await self._flush(conn)
        if self._transferee and self.leader:
            await self._hand_over(conn, self._transferee)
        if now >= self._next_pull:  # other instances' keep-alives, and the reaper lock if it is free
            self._next_pull = now + PULL_SECONDS
            await self._pull(conn)
            if not self.leader:
                await self._try_lead(conn)
        if self.leader:
            await self._reap(conn)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_SECONDS
            await self._heartbeat(conn)
        if now >= self._next_size:
            self._next_size = now + SIZE_SECONDS
            row = await (await conn.execute(_SIZE, (list(TABLES),))).fetchone()
            self.size = int(row[0]) if row else 0

    # -- leases ----------------------------------------------------------------------------------------
    async def _flush(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self._renewed:
            return
        renewed, self._renewed = self._renewed, {}
        now = time.monotonic()
        ids = list(renewed)
        remaining = [max(0.0, ttl - (now - at)) for at, ttl in renewed.values()]
        try:
            await conn.execute(_FLUSH, (ids, remaining))
        except BaseException:
            for lease_id, value in renewed.items():
                self._renewed.setdefault(lease_id, value)
            raise

    async def _pull(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The renewals committed since the last pull (over a window: their transactions are short)."""
        since = self._pulled_at
        row = await (await conn.execute(_PULL, (since, PULL_WINDOW_SECONDS))).fetchone()
        if row is None:
            return
        clock, ids, remaining = row
        self._pulled_at = clock
        attacher = self.attacher
        if since is None or attacher is None:
            return
        for lease_id, seconds in zip(ids, remaining):
            attacher.extend(int(lease_id), float(seconds))

    async def _try_lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Take the reaper lock if it is free (and not being handed to another); else learn who holds it."""
        row = await (await conn.execute(_TRY_LEAD, (to_signed(self._local.id), REAPER_LOCK))).fetchone()
        if row and row[0]:
            self.leader = True
            self.leader_id = self._local.id
            resumed = (await conn.execute(_RESUME, (RESUME_AFTER_SECONDS,))).rowcount
            await conn.execute(_LED, (to_signed(self._local.id),))
            log.info("became the lease reaper", extra={"fields": {"member-id": f"{self._local.id:x}",
                                                                 "leases-given-full-ttl": max(resumed, 0)}})
        elif row and row[1] is not None:
            self.leader_id = to_unsigned(int(row[1]))

    async def transfer_leadership(self, transferee: int, timeout: float) -> bool:
        """Hand the reaper lock to ``transferee`` (a live instance); True once it holds it."""
        self._transferee = transferee
        deadline = time.monotonic() + timeout
        try:
            while self.leader_id != transferee:
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(TICK_SECONDS / 2)
            return True
        finally:
            self._transferee = 0

    async def _hand_over(self, conn: psycopg.AsyncConnection[Any], transferee: int) -> None:
        self._transferee = 0
        await conn.execute(_HAND_OVER, (to_signed(transferee), HANDOFF_SECONDS))
        await conn.execute("SELECT pg_advisory_unlock(%s)", (REAPER_LOCK,))
        self.leader = False
        log.info("handing the lease reaper (leadership) over", extra={"fields": {
            "member-id": f"{self._local.id:x}", "transferee-member-id": f"{transferee:x}"}})

    async def _reap(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rows = await (await conn.execute(_EXPIRED)).fetchall()
        if not rows or self.revoke is None:
            return
        now = time.monotonic()
        for (lease_id,) in rows:
            asked = self._revoking.get(lease_id)
            if asked is not None and now - asked < REVOKE_RETRY_SECONDS:
                continue
            self._revoking[lease_id] = now
            try:
                self.revoke(int(lease_id))
            except errors.EtcdError:  # the log cannot take it now (the database is out of reach): next time
                pass
        if len(self._revoking) > 4096:
            self._revoking = {i: t for i, t in self._revoking.items() if now - t < REVOKE_RETRY_SECONDS}

    # -- membership --------------------------------------------------------------------------------------
    async def _lock_member(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                        (MEMBER_LOCK_SPACE, member_lock_key(self._local.id)))).fetchone()
        if not (row and row[0]):
            if not self._member_lock_warned:
                log.error("another instance serves as this member; give each instance its own --name and peer URLs",
                          extra={"fields": {"member-id": f"{self._local.id:x}"}})
                self._member_lock_warned = True
            return False
        return True

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        local = self._local
        await conn.execute(HEARTBEAT, (to_signed(local.id), local.name, ",".join(local.peer_urls),
                                        ",".join(local.client_urls)))
        if self.leader:
            await conn.execute(_REAPING)
        await self._read_instances(conn)

    async def _read_instances(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rows = await (await conn.execute(_LIVE, (LIVE_SECONDS,))).fetchall()
        self.instances = [Instance(to_unsigned(int(i)), str(n), _urls(p), _urls(c)) for i, n, p, c in rows]

    async def refresh_instances(self) -> None:
        """The live instances read now, not at the last heartbeat (an instance started a moment ago is
        listed at once, as etcd lists every member of its initial cluster); the last list if the
        database does not answer within a second (the keeper's own loop deals with the connection)."""
        if not self.link.connected:
            return
        try:
            await asyncio.wait_for(self._read_instances(await self.link.get()), 1.0)
        except (psycopg.Error, OSError, TimeoutError):
            pass


def member_lock_key(member_id: int) -> int:
    """The member ID folded into a signed 32-bit advisory lock key."""
    folded = (member_id ^ (member_id >> 32)) & 0xFFFF_FFFF
    return folded - (1 << 32) if folded >= 1 << 31 else folded


def _urls(text: object) -> list[str]:
    return [u for u in str(text).split(",") if u]
