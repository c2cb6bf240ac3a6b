"""etcd's bbolt database layout (etcd 3.5's ``member/snap/db`` and ``Maintenance.Snapshot`` stream).

Buckets and their encodings, as etcd 3.5.1 writes them:

=================  =====================================  ===========================================
bucket             key                                    value
=================  =====================================  ===========================================
``key``            main revision (8 bytes big-endian),    ``mvccpb.KeyValue``; a tombstone holds only
                   ``_``, sub revision (8), ``t`` if the  the key
                   version is a tombstone
``meta``           ``consistent_index``, ``term``         8 bytes big-endian
                   ``scheduledCompactRev``,               a revision key (17 bytes), present once a
                   ``finishedCompactRev``                 compaction was scheduled / finished
                   ``confState``                          ``{"voters":[ids],"auto_leave":false}``
``lease``          the lease ID, 8 bytes big-endian       ``leasepb.Lease`` (ID, TTL)
``auth``           ``authEnabled`` (1 byte), ``authRevision`` (8 bytes big-endian)
``authUsers``      user name                              ``authpb.User`` (bcrypt hash, roles, options)
``authRoles``      role name                              ``authpb.Role``
``members``        member ID in hex                       JSON ``{"id","peerURLs","isLearner","name"}``
``members_removed``  member ID in hex                     ``removed``
``cluster``        ``clusterVersion``                     ``3.5.0``
``alarm``          ``etcdserverpb.AlarmMember``           empty
=================  =====================================  ===========================================

``EtcdState`` is everything but the ``key`` bucket as plain data; the key bucket travels as an iterable
of versions in revision order, so neither side ever holds it whole.  ``write_db`` writes a file in one
pass; ``EtcdDB`` reads one back, checking each record's encoding as it goes (``SnapshotError``, one line).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from ...pb.authpb import auth_pb2
from ...pb.etcdserverpb import rpc_pb2
from ...pb.mvccpb import kv_pb2
from ...version import CLUSTER_VERSION
from ..backend import KeyValue
from .bbolt import BUCKET_LEAF_FLAG, PAGE_SIZE, BoltError, BoltReader, BoltWriter
from .protowire import WireError, int_field, int_fields

KEY, META, LEASE, AUTH = b"key", b"meta", b"lease", b"auth"
AUTH_USERS, AUTH_ROLES, MEMBERS, MEMBERS_REMOVED, CLUSTER, ALARM = (
    b"authUsers", b"authRoles", b"members", b"members_removed", b"cluster", b"alarm")
BUCKETS = (KEY, META, LEASE, AUTH, AUTH_USERS, AUTH_ROLES, MEMBERS, MEMBERS_REMOVED, CLUSTER, ALARM)

_REV = struct.Struct(">QcQ")
_U64 = struct.Struct(">Q")
REV_KEY_SIZE = _REV.size  # 17, one more for the tombstone mark
TOMBSTONE_MARK = b"t"


class SnapshotError(ValueError):
    """A snapshot that cannot be restored; the message is one line saying why."""


@dataclass(slots=True)
class LeaseRecord:
    id: int
    ttl: int
    remaining_ttl: int = 0  # set by etcd's lease checkpoints only


@dataclass(slots=True)
class UserRecord:
    name: str
    password: bytes  # bcrypt hash, b"" for a user without password
    roles: list[str]
    no_password: bool = False


@dataclass(slots=True)
class RoleRecord:
    name: str
    perms: list[tuple[int, bytes, bytes]]  # (READ/WRITE/READWRITE, key, range_end)


@dataclass(slots=True)
class AuthRecord:
    enabled: bool = False
    revision: int = 1
    users: list[UserRecord] = field(default_factory=list)
    roles: list[RoleRecord] = field(default_factory=list)


@dataclass(slots=True)
class MemberRecord:
    id: int
    name: str
    peer_urls: list[str]
    is_learner: bool = False


@dataclass(slots=True)
class EtcdState:
    """Everything in an etcd database but the key bucket."""

    revision: int = 1  # the store's current revision
    compact_revision: int = -1  # the last finished compaction (etcd's compactMainRev); -1: never
    scheduled_compact_revision: int = -1  # a compaction asked for, maybe not finished
    consistent_index: int = 0  # the raft index the state includes
    term: int = 0
    leases: list[LeaseRecord] = field(default_factory=list)
    auth: AuthRecord = field(default_factory=AuthRecord)
    members: list[MemberRecord] = field(default_factory=list)
    removed_members: list[int] = field(default_factory=list)
    alarms: list[tuple[int, int]] = field(default_factory=list)  # (member ID, alarm type)
    cluster_version: str = CLUSTER_VERSION
    ignored_buckets: list[str] = field(default_factory=list)  # what a reader found and does not know


# -- records ---------------------------------------------------------------------------------------
def revision_key(main: int, sub: int, tombstone: bool) -> bytes:
    key = _REV.pack(main, b"_", sub)
    return key + TOMBSTONE_MARK if tombstone else key


def parse_revision_key(key: bytes) -> tuple[int, int, bool]:
    """(main, sub, tombstone) of a key-bucket key."""
    if len(key) not in (REV_KEY_SIZE, REV_KEY_SIZE + 1) or key[8:9] != b"_" or \
            (len(key) > REV_KEY_SIZE and key[-1:] != TOMBSTONE_MARK):
        raise SnapshotError(f"key bucket: {key.hex()} is not a revision key")
    main, _, sub = _REV.unpack_from(key)
    if main >= 1 << 63 or sub >= 1 << 63:
        raise SnapshotError(f"key bucket: revision {main}_{sub} overflows int64")
    return main, sub, len(key) > REV_KEY_SIZE


def marshal_version(kv: KeyValue) -> bytes:
    if kv.version == 0:
        return kv_pb2.KeyValue(key=kv.key).SerializeToString()
    return kv_pb2.KeyValue(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                           version=kv.version, value=kv.value, lease=kv.lease).SerializeToString()


def unmarshal_version(rev_key: bytes, value: bytes) -> KeyValue:
    main, sub, tombstone = parse_revision_key(rev_key)
    try:
        pb = kv_pb2.KeyValue.FromString(value)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise SnapshotError(f"key bucket: revision {main}_{sub} does not hold an mvccpb.KeyValue ({exc})") from None
    if tombstone:
        if pb.value or pb.create_revision or pb.mod_revision or pb.version or pb.lease:
            raise SnapshotError(f"key bucket: the deletion of key {pb.key!r} at revision {main} holds more than the key")
        return KeyValue(pb.key, b"", 0, main, 0, 0, sub)
    if pb.version == 0:
        raise SnapshotError(f"key bucket: key {pb.key!r} at revision {main} is not marked as a deletion but has "
                            f"version 0")
    if pb.mod_revision != main:
        raise SnapshotError(f"key bucket: key {pb.key!r} at revision {main} says mod_revision {pb.mod_revision}")
    return KeyValue(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease, sub)


def _u64(value: int) -> bytes:
    return _U64.pack(value & ((1 << 64) - 1))


def _go_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def member_json(m: MemberRecord) -> bytes:
    """The member as etcd's membership.Member marshals (its field order, omitempty fields left out)."""
    out: dict[str, object] = {"id": m.id, "peerURLs": m.peer_urls}
    if m.is_learner:
        out["isLearner"] = True
    if m.name:
        out["name"] = m.name
    return _go_json(out)


def lease_value(lease: LeaseRecord) -> bytes:
    return int_field(1, lease.id) + int_field(2, lease.ttl) + int_field(3, lease.remaining_ttl)


def _user_value(u: UserRecord) -> bytes:
    pb = auth_pb2.User(name=u.name.encode(), password=u.password, roles=u.roles)
    pb.options.no_password = u.no_password  # etcd 3.5 always stores the (maybe empty) options
    return pb.SerializeToString()


def _role_value(r: RoleRecord) -> bytes:
    pb = auth_pb2.Role(name=r.name.encode())
    for perm_type, key, range_end in r.perms:
        pb.keyPermission.add(permType=perm_type, key=key, range_end=range_end)
    return pb.SerializeToString()


# -- writing ---------------------------------------------------------------------------------------
def _sorted_items(pairs: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, int]]:
    return [(k, v, 0) for k, v in sorted(pairs)]


def _small_buckets(state: EtcdState) -> dict[bytes, list[tuple[bytes, bytes, int]]]:
    meta = [(b"consistent_index", _u64(state.consistent_index)), (b"term", _u64(state.term))]
    if state.scheduled_compact_revision >= 0:
        meta.append((b"scheduledCompactRev", revision_key(state.scheduled_compact_revision, 0, False)))
    if state.compact_revision >= 0:
        meta.append((b"finishedCompactRev", revision_key(state.compact_revision, 0, False)))
    conf: dict[str, object] = {"voters": [m.id for m in state.members if not m.is_learner]}
    if any(m.is_learner for m in state.members):
        conf["learners"] = [m.id for m in state.members if m.is_learner]
    conf["auto_leave"] = False
    meta.append((b"confState", _go_json(conf)))
    auth = [(b"authRevision", _u64(state.auth.revision))]
    if state.auth.enabled:
        auth.append((b"authEnabled", b"\x01"))
    return {
        META: _sorted_items(meta),
        LEASE: _sorted_items((_u64(le.id), lease_value(le)) for le in state.leases),
        AUTH: _sorted_items(auth),
        AUTH_USERS: _sorted_items((u.name.encode(), _user_value(u)) for u in state.auth.users),
        AUTH_ROLES: _sorted_items((r.name.encode(), _role_value(r)) for r in state.auth.roles),
        MEMBERS: _sorted_items((f"{m.id:x}".encode(), member_json(m)) for m in state.members),
        MEMBERS_REMOVED: _sorted_items((f"{i:x}".encode(), b"removed") for i in state.removed_members),
        CLUSTER: _sorted_items([(b"clusterVersion", state.cluster_version.encode())]),
        ALARM: _sorted_items((rpc_pb2.AlarmMember(memberID=m, alarm=cast(rpc_pb2.AlarmType, a)).SerializeToString(), b"")
                             for m, a in state.alarms),
    }


def _key_items(versions: Iterable[KeyValue]) -> Iterator[tuple[bytes, bytes, int]]:
    pack, mark, serialize = _REV.pack, TOMBSTONE_MARK, kv_pb2.KeyValue
    for kv in versions:
        if kv.version == 0:
            yield pack(kv.mod_revision, b"_", kv.sub) + mark, serialize(key=kv.key).SerializeToString(), 0
        else:
            yield pack(kv.mod_revision, b"_", kv.sub), serialize(
                key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision, version=kv.version,
                value=kv.value, lease=kv.lease).SerializeToString(), 0


def write_db(f: BinaryIO, state: EtcdState, versions: Iterable[KeyValue]) -> int:
    """Write an etcd database to the seekable ``f`` (from its start); ``versions`` in revision order.

    Returns the file's size.  Memory: one page per tree level, the small buckets, and what the
    iterable holds.
    """
    f.seek(2 * PAGE_SIZE)
    writer = BoltWriter(f)
    small = _small_buckets(state)
    values = {name: writer.bucket(items) for name, items in small.items()}
    values[KEY] = writer.bucket(_key_items(versions))
    meta = writer.finish((name, values[name], BUCKET_LEAF_FLAG) for name in sorted(values))
    f.seek(0)
    f.write(meta)
    f.seek(0, os.SEEK_END)
    return writer.size


# -- reading ---------------------------------------------------------------------------------------
class EtcdDB:
    """An etcd database in a file (up to ``limit`` bytes), read with every record checked.

    ``state()`` reads the small buckets; ``versions()`` walks the key bucket; ``finish_check()``
    after both confirms no page was lost.  Each page may be read once per instance (a second walk
    would count as a second reference): open another one for another pass.
    """

    def __init__(self, fd: int, limit: int) -> None:
        try:
            self._bolt = BoltReader(fd, limit)
            self._buckets = {}
            for name, value, flags in self._bolt.root_items():
                if not flags & BUCKET_LEAF_FLAG:
                    raise SnapshotError(f"the root bucket holds a plain value {name!r}; etcd keeps only buckets there")
                self._buckets[name] = value
        except BoltError as exc:
            raise SnapshotError(str(exc)) from None
        if KEY not in self._buckets or META not in self._buckets:
            raise SnapshotError("not an etcd database (no key or meta bucket)")

    def _items(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        value = self._buckets.get(name)
        if value is None:
            return
        try:
            for key, item, flags in self._bolt.items(value):
                if flags & BUCKET_LEAF_FLAG:
                    raise SnapshotError(f"bucket {name.decode()}: a nested bucket {key!r} etcd never writes")
                yield key, item
        except BoltError as exc:
            raise SnapshotError(f"bucket {name.decode()}: {exc}") from None

    def versions(self) -> Iterator[KeyValue]:
        for key, value in self._items(KEY):
            yield unmarshal_version(key, value)

    def finish_check(self) -> None:
        try:
            for name in self._buckets:
                if name not in BUCKETS:  # walked so that their pages count as reachable
                    for _ in self._bolt.items(self._buckets[name]):
                        pass
            self._bolt.finish_check()
        except BoltError as exc:
            raise SnapshotError(str(exc)) from None

    def state(self) -> EtcdState:
        try:
            return self._state()
        except WireError as exc:
            raise SnapshotError(f"a record is not valid protobuf ({exc})") from None

    def _state(self) -> EtcdState:
        st = EtcdState(ignored_buckets=sorted(n.decode(errors="replace") for n in self._buckets if n not in BUCKETS))
        self._read_meta(st)
        st.leases = [_lease(k, v) for k, v in self._items(LEASE)]
        st.auth = self._read_auth()
        st.members = [_member(k, v) for k, v in self._items(MEMBERS)]
        st.removed_members = [_hex_id(MEMBERS_REMOVED, k) for k, _ in self._items(MEMBERS_REMOVED)]
        st.alarms = [_alarm(k) for k, _ in self._items(ALARM)]
        for k, v in self._items(CLUSTER):
            if k == b"clusterVersion":
                st.cluster_version = _text(CLUSTER, k, v)
        try:
            last_key = self._bolt.last_key(self._buckets[KEY])
        except BoltError as exc:
            raise SnapshotError(f"bucket key: {exc}") from None
        last = parse_revision_key(last_key)[0] if last_key is not None else 0
        st.revision = max(last, st.compact_revision, 1)  # as etcd's store restore picks its revision
        return st

    def _read_meta(self, st: EtcdState) -> None:
        for k, v in self._items(META):
            if k == b"consistent_index":
                st.consistent_index = _int8(META, k, v)
            elif k == b"term":
                st.term = _int8(META, k, v)
            elif k in (b"scheduledCompactRev", b"finishedCompactRev"):
                main, _, tombstone = parse_revision_key(v)
                if tombstone:
                    raise SnapshotError(f"meta bucket: {k.decode()} is a tombstone revision")
                if k == b"finishedCompactRev":
                    st.compact_revision = main
                else:
                    st.scheduled_compact_revision = main

    def _read_auth(self) -> AuthRecord:
        auth = AuthRecord()
        for k, v in self._items(AUTH):
            if k == b"authEnabled":
                if v not in (b"\x00", b"\x01"):
                    raise SnapshotError(f"auth bucket: authEnabled is {v!r}, not 0 or 1")
                auth.enabled = v == b"\x01"
            elif k == b"authRevision":
                auth.revision = _int8(AUTH, k, v)
        auth.users = [_user(k, v) for k, v in self._items(AUTH_USERS)]
        auth.roles = [_role(k, v) for k, v in self._items(AUTH_ROLES)]
        return auth


def _int8(bucket: bytes, key: bytes, value: bytes) -> int:
    if len(value) != 8:
        raise SnapshotError(f"{bucket.decode()} bucket: {key.decode(errors='replace')} has {len(value)} bytes, not 8")
    n: int = _U64.unpack(value)[0]
    if n >= 1 << 63:
        raise SnapshotError(f"{bucket.decode()} bucket: {key.decode(errors='replace')} overflows int64")
    return n


def _text(bucket: bytes, key: bytes, value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise SnapshotError(f"{bucket.decode()} bucket: {key!r} is not UTF-8") from None


def _lease(key: bytes, value: bytes) -> LeaseRecord:
    fields = int_fields(value, {1: "id", 2: "ttl", 3: "remaining"})
    if len(key) != 8 or _U64.unpack(key)[0] != fields["id"] & ((1 << 64) - 1):
        raise SnapshotError(f"lease bucket: key {key.hex()} does not match lease ID {fields['id']}")
    return LeaseRecord(fields["id"], fields["ttl"], fields["remaining"])


def _user(key: bytes, value: bytes) -> UserRecord:
    try:
        pb = auth_pb2.User.FromString(value)
    except Exception as exc:  # noqa: BLE001
        raise SnapshotError(f"authUsers bucket: {key!r} is not an authpb.User ({exc})") from None
    if pb.name != key:
        raise SnapshotError(f"authUsers bucket: key {key!r} holds user {pb.name!r}")
    return UserRecord(_text(AUTH_USERS, key, key), pb.password, list(pb.roles), pb.options.no_password)


def _role(key: bytes, value: bytes) -> RoleRecord:
    try:
        pb = auth_pb2.Role.FromString(value)
    except Exception as exc:  # noqa: BLE001
        raise SnapshotError(f"authRoles bucket: {key!r} is not an authpb.Role ({exc})") from None
    if pb.name != key:
        raise SnapshotError(f"authRoles bucket: key {key!r} holds role {pb.name!r}")
    return RoleRecord(_text(AUTH_ROLES, key, key), [(p.permType, p.key, p.range_end) for p in pb.keyPermission])


def _hex_id(bucket: bytes, key: bytes) -> int:
    try:
        return int(key.decode("ascii"), 16)
    except ValueError:
        raise SnapshotError(f"{bucket.decode()} bucket: {key!r} is not a member ID") from None


def _member(key: bytes, value: bytes) -> MemberRecord:
    member_id = _hex_id(MEMBERS, key)
    try:
        m = json.loads(value)
        record = MemberRecord(int(m["id"]), str(m.get("name", "")), [str(u) for u in m.get("peerURLs") or []],
                              bool(m.get("isLearner", False)))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SnapshotError(f"members bucket: {key.decode()} does not hold a member's JSON") from None
    if record.id != member_id:
        raise SnapshotError(f"members bucket: key {key.decode()} holds member {record.id:x}")
    return record


def _alarm(key: bytes) -> tuple[int, int]:
    try:
        pb = rpc_pb2.AlarmMember.FromString(key)
    except Exception:  # noqa: BLE001
        raise SnapshotError(f"alarm bucket: {key.hex()} is not an AlarmMember") from None
    return pb.memberID, pb.alarm
