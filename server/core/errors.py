"""etcd's client-visible errors, defined once (mirrors etcd's rpctypes/error.go).

The store and the lessor raise these; the gRPC layer turns them into a status
with etcd's exact code and message.
"""

from __future__ import annotations

import grpc


class EtcdError(Exception):
    """An error a client sees as a gRPC status with etcd's code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"


def _err(code: grpc.StatusCode, message: str) -> EtcdError:
    return EtcdError(code, message)


_IA = grpc.StatusCode.INVALID_ARGUMENT
_FP = grpc.StatusCode.FAILED_PRECONDITION
_UA = grpc.StatusCode.UNAVAILABLE

EMPTY_KEY = _err(_IA, "etcdserver: key is not provided")
KEY_NOT_FOUND = _err(_IA, "etcdserver: key not found")
VALUE_PROVIDED = _err(_IA, "etcdserver: value is provided")
LEASE_PROVIDED = _err(_IA, "etcdserver: lease is provided")
TOO_MANY_OPS = _err(_IA, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _err(_IA, "etcdserver: duplicate key given in txn request")
COMPACTED = _err(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _err(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _err(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")

LEASE_NOT_FOUND = _err(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = _err(_FP, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _err(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")

WATCH_CANCELED = _err(grpc.StatusCode.CANCELLED, "etcdserver: watch canceled")

MEMBER_EXIST = _err(_FP, "etcdserver: member ID already exist")
PEER_URL_EXIST = _err(_FP, "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED = _err(_FP, "etcdserver: re-configuration failed due to not enough started members")
MEMBER_BAD_URLS = _err(_IA, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = _err(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = _err(_FP, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _err(_FP, "etcdserver: can only promote a learner member which is in sync with leader")
TOO_MANY_LEARNERS = _err(_FP, "etcdserver: too many learner members in cluster")

REQUEST_TOO_LARGE = _err(_IA, "etcdserver: request is too large")
TOO_MANY_REQUESTS = _err(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

ROOT_USER_NOT_EXIST = _err(_FP, "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = _err(_FP, "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = _err(_FP, "etcdserver: user name already exists")
USER_EMPTY = _err(_IA, "etcdserver: user name is empty")
USER_NOT_FOUND = _err(_FP, "etcdserver: user name not found")
ROLE_ALREADY_EXIST = _err(_FP, "etcdserver: role name already exists")
ROLE_NOT_FOUND = _err(_FP, "etcdserver: role name not found")
ROLE_EMPTY = _err(_IA, "etcdserver: role name is empty")
AUTH_FAILED = _err(_IA, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = _err(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = _err(_FP, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _err(_FP, "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED = _err(_FP, "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = _err(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = _err(_IA, "etcdserver: invalid auth management")
AUTH_OLD_REVISION = _err(_IA, "etcdserver: revision of auth store is old")

NO_LEADER = _err(_UA, "etcdserver: no leader")
NOT_LEADER = _err(_FP, "etcdserver: not leader")
NOT_CAPABLE = _err(_UA, "etcdserver: not capable")
STOPPED = _err(_UA, "etcdserver: server stopped")
TIMEOUT = _err(_UA, "etcdserver: request timed out")
CORRUPT = _err(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
BAD_LEADER_TRANSFEREE = _err(_FP, "etcdserver: bad leader transferee")


def unimplemented(what: str) -> EtcdError:
    """A request (or request field) etcdlite does not serve yet: refused, never ignored."""
    return EtcdError(grpc.StatusCode.UNIMPLEMENTED, f"etcdlite: {what} is not implemented")
