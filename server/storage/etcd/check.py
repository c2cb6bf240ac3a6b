"""What a restorable snapshot must satisfy, checked as its content streams past (issue 16).

A snapshot can be well sealed (its SHA-256 and every checksum fine) and still describe a state no
etcd could have reached: a compact revision above the revision, a key with version -1, a live key
on a lease that does not exist.  Restored, such a state starts and then fails every read, so the
restore refuses it -- with one line, before anything is written.

Memory: the lease IDs, and for each key whose newest version so far carries a lease, that lease
(the keys without one cost nothing); the versions themselves only pass through.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...pb.etcdserverpb import rpc_pb2
from ..backend import MAX_LEASE_TTL, KeyValue
from .etcddb import AuthRecord, EtcdState, SnapshotError

_ALARMS = {rpc_pb2.NOSPACE, rpc_pb2.CORRUPT}
_PERM_TYPES = {0, 1, 2}  # READ, WRITE, READWRITE
ROOT = "root"


def impossible(what: str) -> SnapshotError:
    return SnapshotError(f"the snapshot's content is impossible: {what}")


@dataclass(slots=True)
class VersionStats:
    versions: int = 0
    revisions: int = 0  # distinct revisions among the versions
    last_revision: int = 0


class ContentChecker:
    """Feed it every version in (revision, sub) order with ``version``; ``finish`` checks the rest."""

    def __init__(self, lease_ids: set[int]) -> None:
        self._leases = lease_ids
        self._last = (0, -1)
        self._leased: dict[bytes, int] = {}  # key -> lease of its newest version, while it has one
        self.stats = VersionStats()

    def version(self, kv: KeyValue) -> None:
        where = f"key {kv.key!r} at revision {kv.mod_revision}"
        position = (kv.mod_revision, kv.sub)
        if position <= self._last:
            raise impossible(f"{where} (sub {kv.sub}) comes after revision {self._last[0]} (sub {self._last[1]})")
        if kv.mod_revision != self._last[0]:
            self.stats.revisions += 1
        self._last = position
        if not kv.key:
            raise impossible(f"an empty key at revision {kv.mod_revision}")
        if kv.mod_revision < 1 or kv.sub < 0:
            raise impossible(f"{where} has sub revision {kv.sub}")
        if kv.version == 0:
            if kv.create_revision or kv.lease or kv.value:
                raise impossible(f"{where} is a deletion with a value, lease or create revision")
            self._leased.pop(kv.key, None)
        else:
            self._check_put(kv, where)
        self.stats.versions += 1
        self.stats.last_revision = kv.mod_revision

    def _check_put(self, kv: KeyValue, where: str) -> None:
        if kv.version < 1:
            raise impossible(f"{where} has version {kv.version}")
        if not 1 <= kv.create_revision <= kv.mod_revision:
            raise impossible(f"{where} has create revision {kv.create_revision}")
        if (kv.version == 1) != (kv.create_revision == kv.mod_revision):
            raise impossible(f"{where} has version {kv.version} but create revision {kv.create_revision}")
        if kv.version > kv.mod_revision - kv.create_revision + 1:
            raise impossible(f"{where} has version {kv.version}, more than the revisions since its creation "
                             f"at {kv.create_revision}")
        if kv.lease < 0:
            raise impossible(f"{where} has lease {kv.lease}")
        if kv.lease:
            self._leased[kv.key] = kv.lease
        else:
            self._leased.pop(kv.key, None)

    def finish(self, revision: int, compact_revision: int) -> VersionStats:
        """The revision and compaction against the versions seen; live keys' leases exist."""
        if revision < self.stats.last_revision:
            raise impossible(f"revision {revision} is below the newest version's ({self.stats.last_revision})")
        if compact_revision > revision:
            raise impossible(f"compact revision {compact_revision} is above the revision {revision}")
        if compact_revision < -1:
            raise impossible(f"compact revision {compact_revision}")
        for key, lease in self._leased.items():
            if lease not in self._leases:
                raise impossible(f"key {key!r} is attached to lease {lease:x}, which does not exist")
        return self.stats


def check_state(state: EtcdState) -> None:
    """Everything but the versions: compactions, leases, auth, alarms."""
    if state.scheduled_compact_revision >= 0 and state.scheduled_compact_revision < state.compact_revision:
        raise impossible(f"the scheduled compaction ({state.scheduled_compact_revision}) is below the finished "
                         f"one ({state.compact_revision})")
    if state.scheduled_compact_revision > state.revision:
        raise impossible(f"compact revision {state.scheduled_compact_revision} is above the revision {state.revision}")
    check_leases([(le.id, le.ttl) for le in state.leases])
    check_auth(state.auth)
    for member, alarm in state.alarms:
        if alarm not in _ALARMS:
            raise impossible(f"member {member:x} has an alarm of unknown type {alarm}")


def check_leases(leases: list[tuple[int, int]]) -> set[int]:
    ids: set[int] = set()
    for lease_id, ttl in leases:
        if lease_id <= 0:
            raise impossible(f"lease ID {lease_id}")
        if lease_id in ids:
            raise impossible(f"lease {lease_id:x} appears twice")
        if not 0 < ttl <= MAX_LEASE_TTL:
            raise impossible(f"lease {lease_id:x} has TTL {ttl}")
        ids.add(lease_id)
    return ids


def check_auth(auth: AuthRecord) -> None:
    if auth.revision < 0:
        raise impossible(f"auth revision {auth.revision}")
    roles = {r.name for r in auth.roles}
    if len(roles) != len(auth.roles) or "" in roles:
        raise impossible("role names are empty or repeated")
    for r in auth.roles:
        for perm_type, key, _ in r.perms:
            if perm_type not in _PERM_TYPES or not key:
                raise impossible(f"role {r.name!r} has a permission of type {perm_type} on key {key!r}")
    users = {u.name: u for u in auth.users}
    if len(users) != len(auth.users) or "" in users:
        raise impossible("user names are empty or repeated")
    for u in auth.users:
        missing = [name for name in u.roles if name not in roles]
        if missing:
            raise impossible(f"user {u.name!r} has role {missing[0]!r}, which does not exist")
        if not u.no_password and not u.password:
            raise impossible(f"user {u.name!r} has neither a password nor the no-password option")
    if auth.enabled and (ROOT not in users or ROOT not in users[ROOT].roles):
        raise impossible("auth is enabled without a root user holding the root role")
