"""Permissions: etcd's range permission cache over an interval tree (range_perm_cache.go, adt)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ... import errors
from ...pb.etcdserverpb import rpc_pb2 as pb
from .model import RAW_TEXT, READ, READWRITE, WRITE, AuthInfo, Credentials, Permission, Role, User

# -- range permissions (etcd's range_perm_cache.go over adt's interval tree) ---------------------
Interval = tuple[bytes, bytes]  # [begin, end); an empty end is +infinity (adt.BytesAffineComparable)


def _affine_cmp(a: bytes, b: bytes) -> int:
    """adt.BytesAffineComparable: an empty byte string is greater than every other."""
    if not a:
        return 0 if not b else 1
    if not b:
        return -1
    return (a > b) - (a < b)


def _interval_cmp(q: Interval, n: Interval) -> int:
    """adt.Interval.Compare: -1 if ``q`` is left of ``n``, 1 if right of it, 0 if they intersect."""
    if _affine_cmp(q[0], n[0]) < 0 and _affine_cmp(q[1], n[0]) <= 0:
        return -1
    if _affine_cmp(q[0], n[1]) >= 0:
        return 1
    return 0


def _point(key: bytes) -> Interval:
    """adt.NewBytesAffinePoint: [key, key + "\\0")."""
    return key, key + b"\x00"


def _perm_interval(p: Permission) -> Interval:
    if not p.range_end:
        return _point(p.key)
    return p.key, b"" if p.range_end == b"\x00" else p.range_end


class IntervalSet:
    """The intervals one user may read (or write), ordered by begin as the interval tree visits them."""

    def __init__(self) -> None:
        self._ivs: list[Interval] = []

    def insert(self, iv: Interval) -> None:
        self._ivs.append(iv)
        self._ivs.sort(key=lambda i: (not i[0], i[0]))  # stable: equal begins keep insertion order

    def intersects(self, q: Interval) -> bool:
        return any(_interval_cmp(q, n) == 0 for n in self._ivs)

    def contains(self, q: Interval) -> bool:
        """adt.IntervalTree.Contains: the intersecting intervals cover ``q`` without a gap."""
        min_begin: bytes | None = None
        max_end = b""
        for n in self._ivs:
            if _interval_cmp(q, n) != 0:
                continue
            if min_begin is None:
                min_begin, max_end = n
                continue
            if _affine_cmp(max_end, n[0]) < 0:
                return False
            if _affine_cmp(n[1], max_end) > 0:
                max_end = n[1]
        return min_begin is not None and _affine_cmp(max_end, q[1]) >= 0 and _affine_cmp(min_begin, q[0]) <= 0


@dataclass(slots=True)
class RangePerms:
    """etcd's unifiedRangePermissions: the merged permissions of a user's roles."""

    read: IntervalSet = field(default_factory=IntervalSet)
    write: IntervalSet = field(default_factory=IntervalSet)

    @classmethod
    def of(cls, roles: Iterable[Role]) -> RangePerms:
        merged = cls()
        for role in roles:
            for p in role.perms:
                iv = _perm_interval(p)
                if p.perm_type in (READ, READWRITE):
                    merged.read.insert(iv)
                if p.perm_type in (WRITE, READWRITE):
                    merged.write.insert(iv)
        return merged

    def permits(self, key: bytes, range_end: bytes, perm_type: int) -> bool:
        ivs = self.read if perm_type == READ else self.write
        if not range_end:
            return ivs.intersects(_point(key))
        return ivs.contains((key, b"" if range_end == b"\x00" else range_end))



# -- the checks the services make (etcd's checkTxnAuth, checkLeasePuts, the v3rpc and apply checks) -
class RequestChecks(abc.ABC):
    """The permission checks of each request, over the store's ``_op_permitted`` and ``admin_permitted``."""

    enabled: bool
    _users: dict[str, User]
    _lease_keys: Callable[[int], Iterable[bytes] | None]

    @abc.abstractmethod
    def auth_info(self, who: Credentials | None) -> AuthInfo | None:
        """Who sent the request (the token validated even while auth is off)."""

    @abc.abstractmethod
    def _op_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes, perm_type: int) -> None:
        """Raise unless ``info`` may do ``perm_type`` on the range."""

    @abc.abstractmethod
    def admin_permitted(self, info: AuthInfo | None) -> None:
        """Raise unless ``info`` has the root role (or auth is off)."""

    def range_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._op_permitted(info, key, range_end, READ)

    def put_permitted(self, info: AuthInfo | None, key: bytes) -> None:
        self._op_permitted(info, key, b"", WRITE)

    def delete_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._op_permitted(info, key, range_end, WRITE)

    def _is_admin(self, info: AuthInfo | None) -> bool:
        try:
            self.admin_permitted(info)
        except errors.EtcdError:
            return False
        return True

    def _require_info(self, who: Credentials | None) -> AuthInfo | None:
        """etcd's requireAuthInfo: with auth enabled, a request must name a user."""
        if not self.enabled:
            return None
        info = self.auth_info(who)
        if info is None:
            raise errors.USER_EMPTY
        return info

    def _lease_puts_permitted(self, info: AuthInfo | None, lease_id: int) -> None:
        """Write permission on every key attached to the lease (etcd's checkLeasePuts)."""
        keys = self._lease_keys(lease_id)
        if not keys or self._is_admin(info):
            return
        for key in sorted(keys):
            self.put_permitted(info, key)

    def _put_permitted(self, info: AuthInfo | None, r: pb.PutRequest) -> None:
        """etcd's checkPutAuth."""
        self.put_permitted(info, r.key)
        self._lease_puts_permitted(info, r.lease)
        if r.prev_kv:
            self.range_permitted(info, r.key, b"")

    def _delete_range_permitted(self, info: AuthInfo | None, r: pb.DeleteRangeRequest) -> None:
        self.delete_permitted(info, r.key, r.range_end)
        if r.prev_kv:
            self.range_permitted(info, r.key, r.range_end)

    def _txn_permitted(self, info: AuthInfo | None, r: pb.TxnRequest) -> None:
        """etcd's checkTxnAuth: every compare, then every op of both branches, nested txns too."""
        for c in r.compare:
            self.range_permitted(info, c.key, c.range_end)
        for op in (*r.success, *r.failure):
            which = op.WhichOneof("request")
            if which == "request_range":
                self.range_permitted(info, op.request_range.key, op.request_range.range_end)
            elif which == "request_put":
                self._put_permitted(info, op.request_put)
            elif which == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    self.range_permitted(info, d.key, d.range_end)
                self.delete_permitted(info, d.key, d.range_end)
            elif which == "request_txn":
                self._txn_permitted(info, op.request_txn)

    # -- the checks the services make, first thing in each RPC -------------------------------------
    def check_token(self, who: Credentials | None) -> None:
        """Requests etcd checks no permission for still refuse an invalid token (Compact, LeaseGrant, ...)."""
        self.auth_info(who)

    def check_range(self, who: Credentials | None, r: pb.RangeRequest) -> None:
        self.range_permitted(self.auth_info(who), r.key, r.range_end)

    def check_put(self, who: Credentials | None, r: pb.PutRequest) -> None:
        self._put_permitted(self.auth_info(who), r)

    def check_delete_range(self, who: Credentials | None, r: pb.DeleteRangeRequest) -> None:
        self._delete_range_permitted(self.auth_info(who), r)

    def check_txn(self, who: Credentials | None, r: pb.TxnRequest) -> None:
        self._txn_permitted(self.auth_info(who), r)

    def check_lease_revoke(self, who: Credentials | None, r: pb.LeaseRevokeRequest) -> None:
        """Revoking deletes the lease's keys: write permission on each of them."""
        self._lease_puts_permitted(self.auth_info(who), r.ID)

    def check_lease_keep_alive(self, who: Credentials | None,
                               r: pb.LeaseKeepAliveRequest) -> None:
        """Keeping a lease alive keeps its keys: write permission on each (etcd 3.5.9+'s checkLeaseRenew)."""
        info = self._require_info(who)
        if info is not None:
            self._lease_puts_permitted(info, r.ID)

    def check_lease_time_to_live(self, who: Credentials | None,
                                 r: pb.LeaseTimeToLiveRequest) -> None:
        """A user; with ``keys``, read permission on each attached key (etcd 3.5.9+)."""
        info = self._require_info(who)
        if info is None or not r.keys or self._is_admin(info):
            return
        for key in sorted(self._lease_keys(r.ID) or ()):
            self.range_permitted(info, key, b"")

    def is_watch_permitted(self, who: Credentials | None, creq: pb.WatchCreateRequest) -> bool:
        """Read permission on the watched range, as it was asked for (empty key: from "\\0")."""
        try:
            info = self.auth_info(who)
            self.range_permitted(info, creq.key or b"\x00", creq.range_end)
        except errors.EtcdError:
            return False
        return True

    def check_admin(self, who: Credentials | None) -> None:
        """The root role (auth management, member changes, alarm changes, MoveLeader)."""
        self.admin_permitted(self.auth_info(who))

    def check_maintenance_admin(self, who: Credentials | None) -> None:
        """Snapshot, Defragment, Hash, HashKV: the root role, failing with the auth package's own
        error unconverted (gRPC code Unknown, "auth: ..."), as etcd's authMaintenanceServer does."""
        try:
            self.check_admin(who)
        except errors.EtcdError as exc:
            raise errors.EtcdError(errors.Code.UNKNOWN, RAW_TEXT.get(id(exc), exc.message)) from None

    def check_alarm(self, who: Credentials | None, r: pb.AlarmRequest) -> None:
        """Listing alarms needs a valid token at most; raising or clearing one the root role."""
        if r.action == pb.AlarmRequest.GET:
            self.check_token(who)
        else:
            self.check_admin(who)

    def check_user_get(self, who: Credentials | None, r: pb.AuthUserGetRequest) -> None:
        """Root, or the user asking about itself."""
        info = self.auth_info(who)
        try:
            self.admin_permitted(info)
        except errors.EtcdError:
            if r.name != (info.username if info else ""):
                raise

    def check_role_get(self, who: Credentials | None, r: pb.AuthRoleGetRequest) -> None:
        """Root, or a user that has the role."""
        info = self.auth_info(who)
        try:
            self.admin_permitted(info)
        except errors.EtcdError:
            user = self._users.get(info.username if info else "")
            if user is None or r.role not in user.roles:
                raise
