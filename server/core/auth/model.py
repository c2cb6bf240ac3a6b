"""Auth's data: users, roles, permissions, who a request comes from, and password hashes.

Mirrors etcd's ``server/auth`` types and the errors it returns unconverted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

import bcrypt

from ... import errors
from ...pb.authpb import auth_pb2

log = logging.getLogger("etcdlite.auth")

ROOT_USER = "root"
ROOT_ROLE = "root"
READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

DEFAULT_BCRYPT_COST = 10  # Go's bcrypt.DefaultCost
MIN_BCRYPT_COST, MAX_BCRYPT_COST = 4, 31
BCRYPT_MAX_PASSWORD_BYTES = 72  # Go's bcrypt (as etcd 3.5 vendors it) uses only the first 72 bytes
STATE_FILE = "auth.json"
STATE_VERSION = 1

_UNKNOWN = errors.Code.UNKNOWN
# errors etcd 3.5.1 returns unconverted (not in its toGRPCErrorMap): gRPC code Unknown, the auth package's text
NO_PASSWORD_USER = errors.EtcdError(_UNKNOWN, "auth: authentication failed, password was given for no password user")
PERMISSION_NOT_GIVEN = errors.EtcdError(errors.Code.INVALID_ARGUMENT, "etcdserver: permission not given")
# etcd 3.5.1 does not convert this one either (later releases send errors.AUTH_OLD_REVISION)
AUTH_OLD_REVISION = errors.EtcdError(_UNKNOWN, "auth: revision in header is old")
VERIFY_ONLY = errors.EtcdError(_UNKNOWN, "auth: token signing attempted with verify-only key")
# what etcd's Maintenance admin checks return: the auth package's own errors, unconverted
RAW_TEXT = {
    id(errors.USER_EMPTY): "auth: user name is empty",
    id(errors.USER_NOT_FOUND): "auth: user not found",
    id(errors.PERMISSION_DENIED): "auth: permission denied",
    id(errors.INVALID_AUTH_TOKEN): "auth: invalid auth token",
}
# a refused watch create's cancel reason: the gRPC status error's text, as etcd puts it there
WATCH_PERMISSION_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"


# -- the data ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Permission:
    key: bytes
    range_end: bytes  # b"": the key alone; b"\0": every key from ``key`` on
    perm_type: int  # READ, WRITE or READWRITE

    def to_pb(self) -> auth_pb2.Permission:
        return auth_pb2.Permission(permType=cast(auth_pb2.Permission.Type, self.perm_type), key=self.key,
                                   range_end=self.range_end)


@dataclass(slots=True)
class Role:
    name: str
    perms: list[Permission] = field(default_factory=list)  # sorted by key, as etcd keeps them


@dataclass(slots=True)
class User:
    name: str
    password: bytes  # the bcrypt hash; b"" for a user without password
    roles: list[str] = field(default_factory=list)  # sorted
    no_password: bool = False

    @property
    def is_root(self) -> bool:
        return ROOT_ROLE in self.roles


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who a request comes from: a user name and the auth revision its credential was valid at."""

    username: str
    revision: int



@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request carries to say who sent it, as the api layer read it off the call: a token
    (gRPC metadata ``token``/``authorization``), the verified client certificate's common name,
    and whether it came through the HTTP gateway (whose calls never use the certificate)."""

    token: str | None = None
    cert_cn: str | None = None  # None: no client certificate
    via_gateway: bool = False


NO_CREDENTIALS = Credentials()


# -- passwords -----------------------------------------------------------------------------------
def _password_bytes(password: str) -> bytes:
    return password.encode()[:BCRYPT_MAX_PASSWORD_BYTES]


def hash_password(password: str, cost: int) -> bytes:
    return bcrypt.hashpw(_password_bytes(password), bcrypt.gensalt(cost, prefix=b"2a"))


def password_matches(hashed: bytes, password: str) -> bool:
    try:
        return bcrypt.checkpw(_password_bytes(password), hashed)
    except ValueError:  # not a bcrypt hash (a user whose password was set to nothing)
        return False


def normalize_bcrypt_cost(cost: int) -> int:
    if MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
        return cost
    log.warning("use default bcrypt cost instead of the invalid given cost", extra={"fields": {
        "min-cost": MIN_BCRYPT_COST, "max-cost": MAX_BCRYPT_COST, "default-cost": DEFAULT_BCRYPT_COST,
        "given-cost": cost}})
    return DEFAULT_BCRYPT_COST

