"""etcd's raft entries (``etcdserverpb.InternalRaftRequest``) applied to etcdlite's state, as etcd applies them.

Used by the import of a stopped etcd's data dir (``core.etcd_import``) for the WAL entries its database
does not hold yet.  ``decode`` turns an entry into a request, or None when it changes nothing
etcdlite keeps (raft's empty entries, membership changes, cluster version and member attributes,
lease checkpoints, reads, authentications, etcd's v2 records of its own membership under ``/0/``),
and refuses what cannot be applied (a v2 API write, a request this etcdlite does not know).
``Applier.apply`` applies one: KV requests through etcdlite's ``KVApplier``, leases through its
lessor, auth changes through an ``AuthStore``; a request that fails, fails as in etcd -- without
changing anything.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import bcrypt
from google.protobuf.message import Message

from .. import errors
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..storage.etcd.etcddb import AuthRecord, SnapshotError
from ..storage.etcd.protowire import WireError, iter_fields
from ..storage.etcd.wal import ENTRY_NORMAL, RaftEntry
from ..storage.memory.backend import MemoryBackend
from .auth.model import STATE_VERSION, Permission
from .auth.store import AuthStore
from .auth.tokens import NoTokens
from .kv import KVApplier
from .lease import Lessor
from .snapshot import auth_record, auth_state

Request = Any  # one of the rpc_pb2 request messages below
_REQUESTS: dict[int, type[Message]] = {
    4: pb.PutRequest, 5: pb.DeleteRangeRequest, 6: pb.TxnRequest, 7: pb.CompactionRequest,
    8: pb.LeaseGrantRequest, 9: pb.LeaseRevokeRequest, 10: pb.AlarmRequest,
    1000: pb.AuthEnableRequest, 1011: pb.AuthDisableRequest, 1100: pb.AuthUserAddRequest,
    1101: pb.AuthUserDeleteRequest, 1103: pb.AuthUserChangePasswordRequest, 1104: pb.AuthUserGrantRoleRequest,
    1105: pb.AuthUserRevokeRoleRequest, 1200: pb.AuthRoleAddRequest, 1201: pb.AuthRoleDeleteRequest,
    1203: pb.AuthRoleGrantPermissionRequest, 1204: pb.AuthRoleRevokePermissionRequest,
}
# fields that change nothing etcdlite keeps: ID, range, lease checkpoint, header, authenticate, the auth
# reads (user get/list, role list/get), cluster version, member attributes, downgrade info
_NOTHING = {1, 3, 11, 100, 1012, 1102, 1106, 1107, 1202, 1300, 1301, 1302}
_V2, _V2_PATH = 2, 3
_BCRYPT_COST = 10  # only for a password an older etcd put in its WAL unhashed


@dataclass(slots=True)
class Step:
    index: int
    term: int
    request: Request | None  # None: nothing to apply


def decode(entry: RaftEntry) -> Step:
    if entry.type != ENTRY_NORMAL or not entry.data:
        return Step(entry.index, entry.term, None)  # membership changes, a new leader's empty entry
    try:
        request = _internal_request(entry)
    except WireError:
        # etcd's "backward compatible" form: a bare v2 Request (how it publishes its member
        # attributes until the cluster version is known)
        path = _v2_path(entry.data)
        if path is None:
            raise _cannot(entry, "neither an InternalRaftRequest nor a v2 Request") from None
        _check_v2_path(entry, path)
        return Step(entry.index, entry.term, None)
    return Step(entry.index, entry.term, request)


def _internal_request(entry: RaftEntry) -> Request | None:
    request = None
    for num, _, value in iter_fields(entry.data):
        if num in _REQUESTS:
            if not isinstance(value, bytes):
                raise WireError(f"field {num} is not a message")
            try:
                request = _REQUESTS[num].FromString(value)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
                raise WireError(str(exc)) from None
        elif num == _V2:
            path = _v2_path(value) if isinstance(value, bytes) else None
            if path is None:
                raise WireError("field 2 is not a v2 Request")
            _check_v2_path(entry, path)
        elif num not in _NOTHING:
            raise _cannot(entry, f"a request etcdlite does not know (InternalRaftRequest field {num})")
    return request


def _v2_path(data: bytes) -> bytes | None:
    """A v2 Request's path (field 3, beside its method in field 2); None if ``data`` is not one."""
    try:
        fields = {num: value for num, _, value in iter_fields(data)}
    except WireError:
        return None
    method, path = fields.get(2), fields.get(_V2_PATH)
    return path if isinstance(method, bytes) and isinstance(path, bytes) else None


def _check_v2_path(entry: RaftEntry, path: bytes) -> None:
    if not path.startswith(b"/0/"):  # etcd's own membership and version records in its v2 store
        raise _cannot(entry, f"a v2 API write to {path.decode(errors='replace')!r}")


def _cannot(entry: RaftEntry, what: str) -> SnapshotError:
    return SnapshotError(f"etcd's WAL entry {entry.index} after the database is {what}, which the import does not "
                         f"apply; start etcd once and stop it cleanly (its database then holds it), then import again")


class Applier:
    """etcdlite's state under construction: an in-memory backend with core's KV applier, the lessor,
    alarms and auth."""

    def __init__(self, backend: MemoryBackend, lessor: Lessor, alarms: set[tuple[int, int]],
                 auth: AuthRecord) -> None:
        self._backend = backend
        self._kv = KVApplier(backend, lessor)
        self._lessor = lessor
        self.alarms = alarms
        self._auth = AuthStore(None, NoTokens(), lease_keys=lambda _: None)
        self._auth.load_state(auth_state(auth, STATE_VERSION))

    def auth(self) -> AuthRecord:
        return auth_record(self._auth.export_state())

    def apply(self, request: Request) -> None:
        try:
            name = type(request).__name__
            if name.startswith("Auth"):
                self._apply_auth(request)
            else:
                self._apply_kv(request)
        except errors.EtcdError:
            pass  # etcd answered this entry with an error and changed nothing; so does the import

    def _apply_kv(self, r: Request) -> None:
        kv, lessor, write = self._kv, self._lessor, self._backend.write_nowait  # durable at once: in memory
        if isinstance(r, pb.PutRequest):
            write(lambda txn: kv.put(txn, r))
        elif isinstance(r, pb.DeleteRangeRequest):
            write(lambda txn: kv.delete_range(txn, r))
        elif isinstance(r, pb.TxnRequest):
            write(lambda txn: kv.txn(txn, r))
        elif isinstance(r, pb.CompactionRequest):
            self._backend.store.compact(r.revision)
        elif isinstance(r, pb.LeaseGrantRequest):
            write(lambda txn: lessor.grant(txn, r.ID, r.TTL))
        elif isinstance(r, pb.LeaseRevokeRequest):
            write(lambda txn: lessor.revoke(txn, r.ID))
        elif isinstance(r, pb.AlarmRequest):
            pair = (r.memberID, r.alarm)
            if r.action == pb.AlarmRequest.ACTIVATE and r.alarm != pb.NONE:
                self.alarms.add(pair)
            elif r.action == pb.AlarmRequest.DEACTIVATE:
                self.alarms.discard(pair)

    def _apply_auth(self, r: Request) -> None:
        a = self._auth
        if isinstance(r, pb.AuthEnableRequest):
            a.enable()
        elif isinstance(r, pb.AuthDisableRequest):
            a.disable()
        elif isinstance(r, pb.AuthUserAddRequest):
            no_password = r.HasField("options") and r.options.no_password
            a.user_add(r.name, None if no_password else _hash(r.hashedPassword, r.password), no_password)
        elif isinstance(r, pb.AuthUserDeleteRequest):
            a.user_delete(r.name)
        elif isinstance(r, pb.AuthUserChangePasswordRequest):
            a.user_change_password(r.name, _hash(r.hashedPassword, r.password))
        elif isinstance(r, pb.AuthUserGrantRoleRequest):
            a.user_grant_role(r.user, r.role)
        elif isinstance(r, pb.AuthUserRevokeRoleRequest):
            a.user_revoke_role(r.name, r.role)
        elif isinstance(r, pb.AuthRoleAddRequest):
            a.role_add(r.name)
        elif isinstance(r, pb.AuthRoleDeleteRequest):
            a.role_delete(r.role)
        elif isinstance(r, pb.AuthRoleGrantPermissionRequest):
            perm = Permission(r.perm.key, r.perm.range_end, r.perm.permType) if r.HasField("perm") else None
            a.role_grant_permission(r.name, perm)
        elif isinstance(r, pb.AuthRoleRevokePermissionRequest):
            a.role_revoke_permission(r.role, r.key, r.range_end)


def _hash(hashed: str, password: str) -> bytes | None:
    """The bcrypt hash an entry carries: etcd 3.5 hashes before raft; a client may have sent it
    base64-encoded; etcd 3.4 put the password itself in the entry.  None: not a hash (a user left
    without one is refused by the final check)."""
    if hashed.startswith("$2"):
        return hashed.encode()
    if hashed:
        try:
            return base64.b64decode(hashed, validate=True)
        except (binascii.Error, ValueError):
            return None
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_BCRYPT_COST))
