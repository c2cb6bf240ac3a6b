"""``Maintenance.Snapshot`` as etcd sends it: a bbolt database in etcd's layout (``storage.etcd.etcddb``).

``capture`` takes the running member's state as plain data -- every version etcd's key bucket would
hold, in revision order (``Backend.capture_key_space``), and the leases, users, roles, members,
alarms and indexes -- in one step on the event loop.  The versions are references to the store's
immutable ``KeyValue`` objects, so ``write`` can run in a thread while the loop keeps serving; it
streams pages into a file, never holding the database in memory.  ``take`` does both, after
waiting until what was captured is durable (a snapshot never hands out what a crash could lose).

This module is the only place that reads the live objects; everything past ``capture`` is plain data.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from ..pb.etcdserverpb import rpc_pb2 as pb
from ..storage.backend import KeyValue
from ..storage.etcd.etcddb import AuthRecord, EtcdState, LeaseRecord, MemberRecord, RoleRecord, UserRecord, write_db
from ..storage.fsutil import make_private_dir

if TYPE_CHECKING:
    from .server import Core


# -- auth.json <-> etcd's auth records ---------------------------------------------------------------
def auth_record(state: dict[str, Any]) -> AuthRecord:
    """``AuthStore.export_state()`` (auth.json) as etcd's records."""
    users = [UserRecord(u["name"], base64.b64decode(u["password"]), sorted(u["roles"]), bool(u["no_password"]))
             for u in state["users"]]
    roles = [RoleRecord(r["name"], [(int(p["type"]), base64.b64decode(p["key"]), base64.b64decode(p["range_end"]))
                                    for p in r["permissions"]]) for r in state["roles"]]
    return AuthRecord(bool(state["enabled"]), int(state["revision"]), users, roles)


def auth_state(record: AuthRecord, version: int) -> dict[str, Any]:
    """etcd's auth records as ``auth.json`` holds them (``version``: the auth model's STATE_VERSION)."""
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return {
        "version": version, "enabled": record.enabled, "revision": record.revision,
        "users": [{"name": u.name, "password": b64(u.password), "roles": sorted(u.roles),
                   "no_password": u.no_password} for u in record.users],
        "roles": [{"name": r.name, "permissions": [{"key": b64(key), "range_end": b64(end), "type": perm}
                                                   for perm, key, end in r.perms]}
                  for r in record.roles],
    }


# -- the snapshot --------------------------------------------------------------------------------------
@dataclass(slots=True)
class Capture:
    state: EtcdState
    versions: Iterable[KeyValue]  # the key bucket, in revision order; iterated once, in the writer's thread


def capture(core: Core) -> Capture:
    """The member's whole state now (on the event loop; nothing is copied but pointers)."""
    keys = core.backend.capture_key_space()
    state = EtcdState(
        revision=keys.revision,
        compact_revision=keys.compact_revision,
        scheduled_compact_revision=keys.compact_revision,
        consistent_index=keys.index,
        term=core.raft_term,
        leases=[LeaseRecord(lease_id, ttl) for lease_id, ttl in sorted(keys.leases.items())],
        auth=auth_record(core.auth.export_state()),
        members=[MemberRecord(m.id, m.name, list(m.peer_urls), m.is_learner) for m in core.membership.members()],
        alarms=[(a.memberID, a.alarm) for a in core.alarms.get()],
    )
    return Capture(state, keys.versions)


def write(f: BinaryIO, snap: Capture) -> int:
    """The database into the seekable ``f`` (in a thread: it only reads what ``capture`` returned)."""
    return write_db(f, snap.state, snap.versions)


@dataclass(slots=True)
class SnapshotFile:
    """A written snapshot: ``file`` (at its start, unlinked: closing it frees the space), its size,
    and the response header that marks its point in time."""

    file: IO[bytes]
    size: int
    header: pb.ResponseHeader


async def take(core: Core) -> SnapshotFile:
    """Capture, wait until the captured writes are durable, write the database into a temporary file."""
    snap = capture(core)
    await core.backend.wait_applied()
    # in the data dir, not /tmp (which may be memory), unlinked at once (O_TMPFILE, mode 0600): nothing
    # is left behind if the stream or the process dies
    spill_dir = Path(core.config.data_dir) / "member"
    make_private_dir(spill_dir)
    f = tempfile.TemporaryFile(dir=spill_dir, prefix="snapshot-")
    try:
        size = await asyncio.get_running_loop().run_in_executor(None, write, f, snap)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return SnapshotFile(f, size, core.header(snap.state.revision))
