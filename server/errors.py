"""etcd's client-visible errors, defined once (mirrors etcd's rpctypes/error.go).

Core and storage raise these as plain exceptions: a ``Code`` (the canonical error class, as
etcd's rpctypes assign one to each error) and etcd's message.  Nothing below the api layer
knows gRPC: ``api.status`` maps a ``Code`` to a gRPC status code in one table, and the HTTP
gateway maps that to an HTTP status.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """The canonical error classes etcd's errors fall into (the names of gRPC's status codes)."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An error a client sees, with etcd's class and message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"


def _err(code: Code, message: str) -> EtcdError:
    return EtcdError(code, message)


_IA = Code.INVALID_ARGUMENT
_FP = Code.FAILED_PRECONDITION
_UA = Code.UNAVAILABLE

EMPTY_KEY = _err(_IA, "etcdserver: key is not provided")
KEY_NOT_FOUND = _err(_IA, "etcdserver: key not found")
VALUE_PROVIDED = _err(_IA, "etcdserver: value is provided")
LEASE_PROVIDED = _err(_IA, "etcdserver: lease is provided")
TOO_MANY_OPS = _err(_IA, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _err(_IA, "etcdserver: duplicate key given in txn request")
COMPACTED = _err(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _err(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _err(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")

LEASE_NOT_FOUND = _err(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = _err(_FP, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _err(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")

WATCH_CANCELED = _err(Code.CANCELLED, "etcdserver: watch canceled")

MEMBER_EXIST = _err(_FP, "etcdserver: member ID already exist")
PEER_URL_EXIST = _err(_FP, "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED = _err(_FP, "etcdserver: re-configuration failed due to not enough started members")
MEMBER_BAD_URLS = _err(_IA, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = _err(Code.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = _err(_FP, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _err(_FP, "etcdserver: can only promote a learner member which is in sync with leader")
TOO_MANY_LEARNERS = _err(_FP, "etcdserver: too many learner members in cluster")

REQUEST_TOO_LARGE = _err(_IA, "etcdserver: request is too large")
TOO_MANY_REQUESTS = _err(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

ROOT_USER_NOT_EXIST = _err(_FP, "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = _err(_FP, "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = _err(_FP, "etcdserver: user name already exists")
USER_EMPTY = _err(_IA, "etcdserver: user name is empty")
USER_NOT_FOUND = _err(_FP, "etcdserver: user name not found")
ROLE_ALREADY_EXIST = _err(_FP, "etcdserver: role name already exists")
ROLE_NOT_FOUND = _err(_FP, "etcdserver: role name not found")
ROLE_EMPTY = _err(_IA, "etcdserver: role name is empty")
AUTH_FAILED = _err(_IA, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = _err(Code.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = _err(_FP, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _err(_FP, "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED = _err(_FP, "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = _err(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = _err(_IA, "etcdserver: invalid auth management")
AUTH_OLD_REVISION = _err(_IA, "etcdserver: revision of auth store is old")

NO_LEADER = _err(_UA, "etcdserver: no leader")
NOT_LEADER = _err(_FP, "etcdserver: not leader")
NOT_CAPABLE = _err(_UA, "etcdserver: not capable")
STOPPED = _err(_UA, "etcdserver: server stopped")
TIMEOUT = _err(_UA, "etcdserver: request timed out")
TIMEOUT_DUE_TO_LEADER_FAIL = _err(_UA, "etcdserver: request timed out, possibly due to previous leader failure")
TIMEOUT_DUE_TO_CONNECTION_LOST = _err(_UA, "etcdserver: request timed out, possibly due to connection lost")
TIMEOUT_WAIT_APPLIED_INDEX = _err(_UA, "etcdserver: request timed out, waiting for the applied index took too long")
LEADER_CHANGED = _err(_UA, "etcdserver: leader changed")
UNHEALTHY = _err(_UA, "etcdserver: unhealthy cluster")
CORRUPT = _err(Code.DATA_LOSS, "etcdserver: corrupt cluster")
BAD_LEADER_TRANSFEREE = _err(_FP, "etcdserver: bad leader transferee")
# etcd has no gRPC code of its own for it: togRPCError answers Unknown
TIMEOUT_LEADER_TRANSFER = _err(Code.UNKNOWN, "etcdserver: request timed out, leader transfer took too long")


def unimplemented(what: str) -> EtcdError:
    """A request (or request field) etcdlite does not serve yet: refused, never ignored."""
    return EtcdError(Code.UNIMPLEMENTED, f"etcdlite: {what} is not implemented")


def storage_failure(exc: OSError) -> EtcdError:
    """What clients get once the data dir cannot be written (etcd itself would exit here)."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]  # Go's wording of errno: "no space left on device"
    return EtcdError(Code.UNAVAILABLE,
                     f"etcdserver: storage failure ({reason}); writes are refused until the server restarts")
