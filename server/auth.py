"""etcd's auth store: users, roles, permissions, tokens and every permission check.

Mirrors etcd's ``server/auth`` (store.go, range_perm_cache.go, simple_token.go,
jwt.go, options.go) and the checks etcd makes around it (apply_auth.go,
v3_server.go, v3rpc/watch.go and maintenance.go): same rules, same order, same
errors.  The wire behaviour is etcd 3.5.1's, except where later 3.5 releases
closed a permission hole (also listed in the README's Auth section):

* a Txn's nested txns and its puts' leases / prev_kv are checked (3.5.1 skips them);
* a watch is checked on the range it asked for (3.5.1 turns a ``"\\0"`` range
  end into an empty one first, so a from-key or whole-key-space watch was
  checked as a single key);
* LeaseTimeToLive with keys needs read permission on every attached key, and
  LeaseKeepAlive write permission on them (both need a user);
* Alarm activate/deactivate need the root role (``check_admin`` is also what MoveLeader
  should call once it is served).

Passwords are bcrypt hashes (``--bcrypt-cost``, etcd's default 10); a failed
Authenticate costs one bcrypt comparison, as in etcd (also for an unknown user,
so the time does not tell which users exist).  Tokens are etcd's simple tokens
(``<16 letters>.<index>``, ``--auth-token-ttl`` seconds since last use,
compared in constant time) or JWTs (``--auth-token jwt,pub-key=..,priv-key=..,
sign-method=..,ttl=..``) signed exactly as etcd signs them.  Neither passwords
nor tokens are ever logged.

Persistence: the whole auth state (enabled flag, auth revision, users with
their hashes, roles) is ``<data-dir>/member/auth.json``, rewritten atomically
(temporary file, fsync, rename, fsync of the directory) before a change is
acknowledged.  It is small and changes rarely, and the auth revision is
independent of the key-value revision, so it does not go through the WAL.
Simple tokens live in memory only and end with the process, as in etcd.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import importlib
import json
import logging
import os
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import bcrypt
import grpc

from . import errors
from .config import Config, ConfigError, parse_go_duration
from .fsutil import fsync_dir
from .pb.authpb import auth_pb2
from .pb.etcdserverpb import rpc_pb2 as pb
from .tls import PEERS


class _Lazy:
    """A module imported on first use: pyjwt and cryptography add ~11 MiB to the resident size of
    every server, and only ``--auth-token jwt`` needs them."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


jwt = _Lazy("jwt")
x509 = _Lazy("cryptography.x509")
ec = _Lazy("cryptography.hazmat.primitives.asymmetric.ec")
rsa = _Lazy("cryptography.hazmat.primitives.asymmetric.rsa")
_serialization = _Lazy("cryptography.hazmat.primitives.serialization")


def load_pem_private_key(data: bytes, password: bytes | None = None) -> Any:
    return _serialization.load_pem_private_key(data, password=password)


def load_pem_public_key(data: bytes) -> Any:
    return _serialization.load_pem_public_key(data)


log = logging.getLogger("etcdlite.auth")

ROOT_USER = "root"
ROOT_ROLE = "root"
READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

DEFAULT_BCRYPT_COST = 10  # Go's bcrypt.DefaultCost
MIN_BCRYPT_COST, MAX_BCRYPT_COST = 4, 31
BCRYPT_MAX_PASSWORD_BYTES = 72  # Go's bcrypt (as etcd 3.5 vendors it) uses only the first 72 bytes
DEFAULT_SIMPLE_TOKEN_TTL = 300.0  # seconds, etcd's --auth-token-ttl
DEFAULT_JWT_TTL = 300.0  # etcd's DefaultTTL (5m)
SIMPLE_TOKEN_LETTERS = string.ascii_lowercase + string.ascii_uppercase
SIMPLE_TOKEN_LENGTH = 16
STATE_FILE = "auth.json"
STATE_VERSION = 1

_UNKNOWN = grpc.StatusCode.UNKNOWN
# errors etcd 3.5.1 returns unconverted (not in its toGRPCErrorMap): gRPC code Unknown, the auth package's text
NO_PASSWORD_USER = errors.EtcdError(_UNKNOWN, "auth: authentication failed, password was given for no password user")
PERMISSION_NOT_GIVEN = errors.EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: permission not given")
# etcd 3.5.1 does not convert this one either (later releases send errors.AUTH_OLD_REVISION)
AUTH_OLD_REVISION = errors.EtcdError(_UNKNOWN, "auth: revision in header is old")
VERIFY_ONLY = errors.EtcdError(_UNKNOWN, "auth: token signing attempted with verify-only key")
# what etcd's Maintenance admin checks return: the auth package's own errors, unconverted
_RAW_TEXT = {
    id(errors.USER_EMPTY): "auth: user name is empty",
    id(errors.USER_NOT_FOUND): "auth: user not found",
    id(errors.PERMISSION_DENIED): "auth: permission denied",
    id(errors.INVALID_AUTH_TOKEN): "auth: invalid auth token",
}
# a refused watch create's cancel reason: the gRPC status error's text, as etcd puts it there
WATCH_PERMISSION_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"

# etcd's token option errors (start-up failures)
INVALID_AUTH_OPTS = "auth: invalid auth options"
INVALID_AUTH_METHOD = "auth: invalid auth signature method"
MISSING_KEY = "auth: missing key data"
KEY_MISMATCH = "auth: public and private keys don't match"


# -- the data ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Permission:
    key: bytes
    range_end: bytes  # b"": the key alone; b"\0": every key from ``key`` on
    perm_type: int  # READ, WRITE or READWRITE

    def to_pb(self) -> auth_pb2.Permission:
        return auth_pb2.Permission(permType=self.perm_type, key=self.key, range_end=self.range_end)


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


# -- tokens ----------------------------------------------------------------------------------------
class TokenProvider(Protocol):
    """etcd's TokenProvider."""

    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def invalidate_user(self, username: str) -> None: ...

    def gen_prefix(self) -> str: ...

    def info(self, token: str, revision: int) -> AuthInfo | None: ...

    def assign(self, username: str, revision: int, prefix: str) -> str: ...


@dataclass(slots=True)
class _SimpleToken:
    token: bytes
    username: str
    expiry: float


_GO_ATOI = re.compile(r"[+-]?[0-9]+")


class SimpleTokens:
    """etcd's simple tokens: ``<16 random letters>.<index>``, valid ``ttl`` seconds since last use.

    Tokens are looked up by their index (unique per token) and then compared in
    constant time, so a lookup takes the same time whatever the random part.
    """

    def __init__(self, ttl: float = DEFAULT_SIMPLE_TOKEN_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl if ttl > 0 else DEFAULT_SIMPLE_TOKEN_TTL
        self._clock = clock
        self._enabled = False
        self._tokens: dict[int, _SimpleToken] = {}
        self._index = 0

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False
        self._tokens.clear()

    def invalidate_user(self, username: str) -> None:
        self._tokens = {i: t for i, t in self._tokens.items() if t.username != username}

    def gen_prefix(self) -> str:
        return "".join(secrets.choice(SIMPLE_TOKEN_LETTERS) for _ in range(SIMPLE_TOKEN_LENGTH))

    def assign(self, username: str, revision: int, prefix: str) -> str:
        self._index += 1
        token = f"{prefix}.{self._index}"
        if self._enabled:
            self._expire()
            self._tokens[self._index] = _SimpleToken(token.encode(), username, self._clock() + self._ttl)
        return token

    def info(self, token: str, revision: int) -> AuthInfo | None:
        parts = token.split(".")
        if len(parts) != 2 or not _GO_ATOI.fullmatch(parts[1]):
            return None
        entry = self._tokens.get(int(parts[1]))
        if entry is None or not hmac.compare_digest(entry.token, token.encode()):
            return None
        now = self._clock()
        if now > entry.expiry:
            del self._tokens[int(parts[1])]
            return None
        entry.expiry = now + self._ttl
        return AuthInfo(entry.username, revision)

    def _expire(self) -> None:
        now = self._clock()
        dead = [i for i, t in self._tokens.items() if now > t.expiry]
        for i in dead:
            del self._tokens[i]


class NoTokens:
    """``--auth-token ''``: etcd's nop provider; no token is ever issued or accepted."""

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass

    def invalidate_user(self, username: str) -> None:
        pass

    def gen_prefix(self) -> str:
        return ""

    def info(self, token: str, revision: int) -> AuthInfo | None:
        return None

    def assign(self, username: str, revision: int, prefix: str) -> str:
        raise errors.AUTH_FAILED


_JWT_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                   "HS256", "HS384", "HS512"}
_JWT_OPTIONS = ("sign-method", "pub-key", "priv-key", "ttl")


class JWTTokens:
    """etcd's JWT tokens: claims ``username``, ``revision`` and ``exp``, signed with ``sign-method``.

    With only a public key the server verifies tokens but cannot issue them.
    """

    def __init__(self, algorithm: str, sign_key: Any, verify_key: Any, ttl: float) -> None:
        self.algorithm = algorithm
        self._sign_key = sign_key  # None: verify only
        self._verify_key = verify_key
        self._ttl = ttl

    @classmethod
    def from_options(cls, opts: dict[str, str]) -> JWTTokens:
        unknown = sorted(k for k in opts if k not in _JWT_OPTIONS)
        if unknown:
            log.warning("unknown JWT options", extra={"fields": {"keys": unknown}})
        ttl = DEFAULT_JWT_TTL
        if opts.get("ttl"):
            try:
                ttl = parse_go_duration(opts["ttl"])
            except ValueError:
                raise ConfigError(f'time: invalid duration "{opts["ttl"]}"') from None
        public = _read_key_file(opts.get("pub-key", ""))
        private = _read_key_file(opts.get("priv-key", ""))
        method = opts.get("sign-method", "")
        if method not in _JWT_ALGORITHMS:
            raise ConfigError(INVALID_AUTH_METHOD)
        if method.startswith("HS"):
            if not private:
                raise ConfigError(MISSING_KEY)
            return cls(method, private, private, ttl)
        sign, verify = _asymmetric_keys(method, public, private)
        return cls(method, sign, verify, ttl)

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass

    def invalidate_user(self, username: str) -> None:
        pass

    def gen_prefix(self) -> str:
        return ""

    def info(self, token: str, revision: int) -> AuthInfo | None:
        try:
            claims = jwt.decode(token, self._verify_key, algorithms=[self.algorithm],
                                options={"verify_aud": False, "verify_iss": False, "verify_sub": False,
                                         "verify_jti": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            log.warning("failed to parse a JWT token")
            return None
        username, rev = claims.get("username"), claims.get("revision")
        if not isinstance(username, str) or isinstance(rev, bool) or not isinstance(rev, (int, float)):
            return None
        return AuthInfo(username, int(rev))

    def assign(self, username: str, revision: int, prefix: str) -> str:
        if self._sign_key is None:
            raise VERIFY_ONLY
        # Go marshals the claims map with sorted keys; so does this
        claims = {"exp": int(time.time() + self._ttl), "revision": revision, "username": username}
        return jwt.encode(claims, self._sign_key, algorithm=self.algorithm)


def _read_key_file(path: str) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"open {path}: {exc.strerror.lower() if exc.strerror else exc}") from None


def _load_public(data: bytes) -> Any:
    try:
        return load_pem_public_key(data)
    except ValueError:
        try:
            return x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise ConfigError("invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key") from None


def _asymmetric_keys(method: str, public: bytes, private: bytes) -> tuple[Any, Any]:
    """(signing key or None, verifying key) for an RS*/PS*/ES* method, checked as etcd's options.go."""
    kind: type = ec.EllipticCurvePrivateKey if method.startswith("ES") else rsa.RSAPrivateKey
    pub_kind: type = ec.EllipticCurvePublicKey if method.startswith("ES") else rsa.RSAPublicKey
    priv_key = pub_key = None
    if private:
        try:
            priv_key = load_pem_private_key(private, password=None)
        except (ValueError, TypeError):
            priv_key = None
        if not isinstance(priv_key, kind):
            raise ConfigError(f"Key is not a valid {'ECDSA' if method.startswith('ES') else 'RSA'} private key")
    if public:
        pub_key = _load_public(public)
        if not isinstance(pub_key, pub_kind):
            raise ConfigError(f"Key is not a valid {'ECDSA' if method.startswith('ES') else 'RSA'} public key")
    if priv_key is None:
        if pub_key is None:
            raise ConfigError(MISSING_KEY)
        return None, pub_key
    if pub_key is not None and _keys_mismatch(pub_key, priv_key.public_key()):
        raise ConfigError(KEY_MISMATCH)
    return priv_key, priv_key.public_key()


def _keys_mismatch(given: Any, derived: Any) -> bool:
    """etcd's (lenient) check: a mismatch only when every compared number differs."""
    a, b = given.public_numbers(), derived.public_numbers()
    if isinstance(a, rsa.RSAPublicNumbers):
        return a.e != b.e and a.n != b.n
    return a.curve.name != b.curve.name and a.x != b.x and a.y != b.y


def parse_token_options(spec: str) -> tuple[str, dict[str, str]]:
    """etcd's decomposeOpts: ``type[,name=value...]``."""
    parts = spec.split(",")
    opts: dict[str, str] = {}
    for part in parts[1:]:
        pair = part.split("=")
        if len(pair) != 2 or pair[0] in opts:
            raise ConfigError(INVALID_AUTH_OPTS)
        opts[pair[0]] = pair[1]
    return parts[0], opts


def new_token_provider(spec: str, simple_ttl: float) -> TokenProvider:
    """``--auth-token``: ``simple`` (default), ``jwt,...`` or empty (no tokens)."""
    kind, opts = parse_token_options(spec)
    if kind == "simple":
        log.warning("simple token is not cryptographically signed")
        return SimpleTokens(simple_ttl)
    if kind == "jwt":
        return JWTTokens.from_options(opts)
    if kind == "":
        return NoTokens()
    raise ConfigError(INVALID_AUTH_OPTS)


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


# -- the request side: credentials from gRPC --------------------------------------------------------
def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    md: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        md.setdefault(key.lower(), value if isinstance(value, str) else value.decode(errors="replace"))
    return md


def _tls_common_name(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's CN ("" when it has none); None without a client certificate."""
    props = context.auth_context() or {}
    if not props.get("x509_pem_cert") and not props.get("x509_subject"):
        return PEERS.common_name(context.peer())  # a connection the TLS front relays (tlsfront.py)
    names = props.get("x509_common_name") or [b""]
    return names[0].decode(errors="replace")


# -- the store -------------------------------------------------------------------------------------
LeaseKeys = Callable[[int], "Iterable[bytes] | None"]  # a lease's attached keys; None when no such lease


class AuthStore:
    """Users, roles and the enabled flag, persisted; tokens; the permission checks.

    Management methods are etcd's apply step (called once the caller passed the
    admin check); ``check_*`` methods are what the gRPC services call first.
    """

    def __init__(self, path: Path | None, tokens: TokenProvider, *, lease_keys: LeaseKeys,
                 bcrypt_cost: int = DEFAULT_BCRYPT_COST, client_cert_auth: bool = False,
                 fsync: bool = True) -> None:
        self._path = path
        self._tokens = tokens
        self._lease_keys = lease_keys
        self.bcrypt_cost = normalize_bcrypt_cost(bcrypt_cost)
        self._client_cert_auth = client_cert_auth
        self._fsync = fsync
        self.enabled = False
        self.revision = 1  # etcd commits revision 1 when it creates the store
        self._users: dict[str, User] = {}
        self._roles: dict[str, Role] = {}
        self._perm_cache: dict[str, RangePerms] = {}
        self._dummy_hash: bytes | None = None
        if path is not None and path.exists():
            self._load(path)
        if self.enabled:
            tokens.enable()

    @classmethod
    def from_config(cls, config: Config, lease_keys: LeaseKeys) -> AuthStore:
        tokens = new_token_provider(config.auth_token, float(config.auth_token_ttl))
        return cls(Path(config.data_dir) / "member" / STATE_FILE, tokens, lease_keys=lease_keys,
                   bcrypt_cost=config.bcrypt_cost, client_cert_auth=config.client_cert_auth,
                   fsync=not config.unsafe_no_fsync)

    # -- persistence ----------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_bytes())
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {state.get('version')!r}")
            self.enabled = bool(state["enabled"])
            self.revision = int(state["revision"])
            for u in state["users"]:
                self._users[u["name"]] = User(u["name"], base64.b64decode(u["password"]), list(u["roles"]),
                                              bool(u["no_password"]))
            for r in state["roles"]:
                self._roles[r["name"]] = Role(r["name"], [
                    Permission(base64.b64decode(p["key"]), base64.b64decode(p["range_end"]), int(p["type"]))
                    for p in r["permissions"]])
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ConfigError(f"cannot load the auth state {path}: {exc}") from None

    def _encode(self) -> bytes:
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode()

        state = {
            "version": STATE_VERSION, "enabled": self.enabled, "revision": self.revision,
            "users": [{"name": u.name, "password": b64(u.password), "roles": u.roles, "no_password": u.no_password}
                      for u in self._users.values()],
            "roles": [{"name": r.name, "permissions": [
                {"key": b64(p.key), "range_end": b64(p.range_end), "type": p.perm_type} for p in r.perms]}
                for r in self._roles.values()],
        }
        return json.dumps(state, indent=1).encode()

    def _save(self) -> None:
        """Replace the state file atomically; it holds password hashes, so only the owner may read it."""
        if self._path is None:
            return
        path = self._path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self._encode())
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self._fsync:
            fsync_dir(path.parent)

    @contextmanager
    def _change(self, commit_revision: bool = True) -> Iterator[None]:
        """One change: applied, revision bumped, saved; on any failure the old state is kept."""
        saved = (self.enabled, self.revision, copy.deepcopy(self._users), copy.deepcopy(self._roles))
        try:
            yield
            if commit_revision:
                self.revision += 1
            self._save()
        except BaseException:
            self.enabled, self.revision, self._users, self._roles = saved
            raise
        finally:
            self._perm_cache.clear()

    # -- credentials ----------------------------------------------------------------------------
    def auth_info(self, context: grpc.aio.ServicerContext | None) -> AuthInfo | None:
        """etcd's AuthInfoFromCtx, then AuthInfoFromTLS: the token's user, else the client cert's CN.

        A token that is not valid is refused even while auth is disabled, as etcd 3.5.1 does.
        ``context`` None (an in-process caller) has no credentials.
        """
        if context is None:
            return None
        md = _metadata(context)
        token = md.get("token", md.get("authorization"))
        if token is not None:
            info = self._tokens.info(token, self.revision)
            if info is None:
                log.warning("invalid auth token")
                raise errors.INVALID_AUTH_TOKEN
            return info
        if not self._client_cert_auth or "grpcgateway-accept" in md:
            return None
        name = _tls_common_name(context)
        return None if name is None else AuthInfo(name, self.revision)

    # -- permission checks (etcd's authStore.Is*Permitted) --------------------------------------
    def _user_perms(self, user: User) -> RangePerms:
        perms = self._perm_cache.get(user.name)
        if perms is None:
            perms = RangePerms.of(r for name in user.roles if (r := self._roles.get(name)) is not None)
            self._perm_cache[user.name] = perms
        return perms

    def _op_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes, perm_type: int) -> None:
        if not self.enabled:
            return
        if info is None or info.revision == 0:
            raise errors.USER_EMPTY
        if info.revision < self.revision:
            raise AUTH_OLD_REVISION
        user = self._users.get(info.username)
        if user is None:
            raise errors.PERMISSION_DENIED
        if user.is_root or self._user_perms(user).permits(key, range_end, perm_type):
            return
        raise errors.PERMISSION_DENIED

    def range_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._op_permitted(info, key, range_end, READ)

    def put_permitted(self, info: AuthInfo | None, key: bytes) -> None:
        self._op_permitted(info, key, b"", WRITE)

    def delete_permitted(self, info: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._op_permitted(info, key, range_end, WRITE)

    def admin_permitted(self, info: AuthInfo | None) -> None:
        if not self.enabled:
            return
        if info is None or not info.username:
            raise errors.USER_EMPTY
        user = self._users.get(info.username)
        if user is None:
            raise errors.USER_NOT_FOUND
        if not user.is_root:
            raise errors.PERMISSION_DENIED

    def _is_admin(self, info: AuthInfo | None) -> bool:
        try:
            self.admin_permitted(info)
        except errors.EtcdError:
            return False
        return True

    def _require_info(self, context: grpc.aio.ServicerContext | None) -> AuthInfo | None:
        """etcd's requireAuthInfo: with auth enabled, a request must name a user."""
        if not self.enabled:
            return None
        info = self.auth_info(context)
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
    def check_token(self, context: grpc.aio.ServicerContext | None) -> None:
        """Requests etcd checks no permission for still refuse an invalid token (Compact, LeaseGrant, ...)."""
        self.auth_info(context)

    def check_range(self, context: grpc.aio.ServicerContext | None, r: pb.RangeRequest) -> None:
        self.range_permitted(self.auth_info(context), r.key, r.range_end)

    def check_put(self, context: grpc.aio.ServicerContext | None, r: pb.PutRequest) -> None:
        self._put_permitted(self.auth_info(context), r)

    def check_delete_range(self, context: grpc.aio.ServicerContext | None, r: pb.DeleteRangeRequest) -> None:
        self._delete_range_permitted(self.auth_info(context), r)

    def check_txn(self, context: grpc.aio.ServicerContext | None, r: pb.TxnRequest) -> None:
        self._txn_permitted(self.auth_info(context), r)

    def check_lease_revoke(self, context: grpc.aio.ServicerContext | None, r: pb.LeaseRevokeRequest) -> None:
        """Revoking deletes the lease's keys: write permission on each of them."""
        self._lease_puts_permitted(self.auth_info(context), r.ID)

    def check_lease_keep_alive(self, context: grpc.aio.ServicerContext | None,
                               r: pb.LeaseKeepAliveRequest) -> None:
        """Keeping a lease alive keeps its keys: write permission on each (etcd 3.5.9+'s checkLeaseRenew)."""
        info = self._require_info(context)
        if info is not None:
            self._lease_puts_permitted(info, r.ID)

    def check_lease_time_to_live(self, context: grpc.aio.ServicerContext | None,
                                 r: pb.LeaseTimeToLiveRequest) -> None:
        """A user; with ``keys``, read permission on each attached key (etcd 3.5.9+)."""
        info = self._require_info(context)
        if info is None or not r.keys or self._is_admin(info):
            return
        for key in sorted(self._lease_keys(r.ID) or ()):
            self.range_permitted(info, key, b"")

    def is_watch_permitted(self, context: grpc.aio.ServicerContext | None, creq: pb.WatchCreateRequest) -> bool:
        """Read permission on the watched range, as it was asked for (empty key: from "\\0")."""
        try:
            info = self.auth_info(context)
            self.range_permitted(info, creq.key or b"\x00", creq.range_end)
        except errors.EtcdError:
            return False
        return True

    def check_admin(self, context: grpc.aio.ServicerContext | None) -> None:
        """The root role (auth management, member changes, alarm changes, MoveLeader)."""
        self.admin_permitted(self.auth_info(context))

    def check_maintenance_admin(self, context: grpc.aio.ServicerContext | None) -> None:
        """Snapshot, Defragment, Hash, HashKV: the root role, failing with the auth package's own
        error unconverted (gRPC code Unknown, "auth: ..."), as etcd's authMaintenanceServer does."""
        try:
            self.check_admin(context)
        except errors.EtcdError as exc:
            raise errors.EtcdError(_UNKNOWN, _RAW_TEXT.get(id(exc), exc.message)) from None

    def check_alarm(self, context: grpc.aio.ServicerContext | None, r: pb.AlarmRequest) -> None:
        """Listing alarms needs a valid token at most; raising or clearing one the root role."""
        if r.action == pb.AlarmRequest.GET:
            self.check_token(context)
        else:
            self.check_admin(context)

    def check_user_get(self, context: grpc.aio.ServicerContext | None, r: pb.AuthUserGetRequest) -> None:
        """Root, or the user asking about itself."""
        info = self.auth_info(context)
        try:
            self.admin_permitted(info)
        except errors.EtcdError:
            if r.name != (info.username if info else ""):
                raise

    def check_role_get(self, context: grpc.aio.ServicerContext | None, r: pb.AuthRoleGetRequest) -> None:
        """Root, or a user that has the role."""
        info = self.auth_info(context)
        try:
            self.admin_permitted(info)
        except errors.EtcdError:
            user = self._users.get(info.username if info else "")
            if user is None or r.role not in user.roles:
                raise

    # -- authentication ---------------------------------------------------------------------------
    async def authenticate(self, name: str, password: str) -> str:
        """etcd's Authenticate: check the password (bcrypt, off the event loop), then issue a token.

        If the auth state changed while the password was being checked, check again.
        """
        while True:
            revision, hashed = self._password_of(name)
            if not await asyncio.to_thread(password_matches, hashed, password):
                log.warning("invalid authentication was requested", extra={"fields": {"user": name}})
                raise errors.AUTH_FAILED
            token = self._assign(name)
            if revision == self.revision:
                return token
            log.info("revision when password checked became stale; retrying")

    def _password_of(self, name: str) -> tuple[int, bytes]:
        """(revision, hash) to check; an unknown user gets a hash no password matches, so failing
        costs the same whether or not the user exists."""
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = self._users.get(name)
        if user is not None and user.no_password:
            log.warning("invalid authentication was requested", extra={"fields": {"user": name}})
            raise NO_PASSWORD_USER
        if user is None:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password(secrets.token_hex(16), self.bcrypt_cost)
            return self.revision, self._dummy_hash  # the hash of a random secret nobody knows
        return self.revision, user.password

    def _assign(self, name: str) -> str:
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = self._users.get(name)
        if user is None or user.no_password:
            raise errors.AUTH_FAILED
        return self._tokens.assign(name, self.revision, self._tokens.gen_prefix())

    async def hash_password(self, password: str) -> bytes:
        return await asyncio.to_thread(hash_password, password, self.bcrypt_cost)

    # -- management (etcd's apply step; the caller checked the root role) --------------------------
    def status(self) -> tuple[bool, int]:
        return self.enabled, self.revision

    def enable(self) -> None:
        if self.enabled:
            log.info("authentication is already enabled; ignored auth enable request")
            return
        root = self._users.get(ROOT_USER)
        if root is None:
            raise errors.ROOT_USER_NOT_EXIST
        if not root.is_root:
            raise errors.ROOT_ROLE_NOT_EXIST
        with self._change(commit_revision=False):
            self.enabled = True
        self._tokens.enable()
        log.info("enabled authentication")

    def disable(self) -> None:
        if not self.enabled:
            return
        with self._change():
            self.enabled = False
        self._tokens.disable()
        log.info("disabled authentication")

    def user_add(self, name: str, password: bytes | None, no_password: bool) -> None:
        """``password`` is the bcrypt hash (None with ``no_password``)."""
        if not name:
            raise errors.USER_EMPTY
        if name in self._users:
            raise errors.USER_ALREADY_EXIST
        with self._change():
            self._users[name] = User(name, b"" if no_password else (password or b""), [], no_password)
        log.info("added a user", extra={"fields": {"user-name": name}})

    def user_delete(self, name: str) -> None:
        if self.enabled and name == ROOT_USER:
            log.error("cannot delete 'root' user")
            raise errors.INVALID_AUTH_MGMT
        if name not in self._users:
            raise errors.USER_NOT_FOUND
        with self._change():
            del self._users[name]
        self._tokens.invalidate_user(name)
        log.info("deleted a user", extra={"fields": {"user-name": name}})

    def user_change_password(self, name: str, password: bytes | None) -> None:
        """``password``: the new hash; None when the client sent a hash that is not base64."""
        user = self._users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        if not user.no_password and password is None:
            raise NO_PASSWORD_USER
        with self._change():
            self._users[name].password = b"" if user.no_password else password or b""
        self._tokens.invalidate_user(name)
        log.info("changed a password of a user", extra={"fields": {"user-name": name}})

    def user_grant_role(self, name: str, role: str) -> None:
        user = self._users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        if role != ROOT_ROLE and role not in self._roles:
            raise errors.ROLE_NOT_FOUND
        if role in user.roles:
            log.warning("ignored grant role request to a user")
            return
        with self._change():
            self._users[name].roles = sorted([*user.roles, role])
        log.info("granted a role to a user", extra={"fields": {"user-name": name, "added-role-name": role}})

    def user_get(self, name: str) -> list[str]:
        user = self._users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        return list(user.roles)

    def user_list(self) -> list[str]:
        return sorted(self._users, key=str.encode)

    def user_revoke_role(self, name: str, role: str) -> None:
        if self.enabled and name == ROOT_USER and role == ROOT_ROLE:
            log.error("'root' user cannot revoke 'root' role")
            raise errors.INVALID_AUTH_MGMT
        user = self._users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        if role not in user.roles:
            raise errors.ROLE_NOT_GRANTED
        with self._change():
            self._users[name].roles = [r for r in user.roles if r != role]
        log.info("revoked a role from a user", extra={"fields": {"user-name": name, "revoked-role-name": role}})

    def role_add(self, name: str) -> None:
        if not name:
            raise errors.ROLE_EMPTY
        if name in self._roles:
            raise errors.ROLE_ALREADY_EXIST
        with self._change():
            self._roles[name] = Role(name)
        log.info("created a role", extra={"fields": {"role-name": name}})

    def role_get(self, name: str) -> list[Permission]:
        role = self._roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        return list(role.perms)

    def role_list(self) -> list[str]:
        return sorted(self._roles, key=str.encode)

    def role_delete(self, name: str) -> None:
        if self.enabled and name == ROOT_ROLE:
            log.error("cannot delete 'root' role")
            raise errors.INVALID_AUTH_MGMT
        if name not in self._roles:
            raise errors.ROLE_NOT_FOUND
        with self._change():
            del self._roles[name]
            for user in self._users.values():
                if name in user.roles:
                    user.roles = [r for r in user.roles if r != name]
        log.info("deleted a role", extra={"fields": {"role-name": name}})

    def role_grant_permission(self, name: str, perm: Permission | None) -> None:
        """Update the permission with the same key and range end, else add it (kept sorted by key).

        Like etcd, only the first permission at or after the key is compared.
        """
        if perm is None:
            raise PERMISSION_NOT_GIVEN
        role = self._roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        with self._change():
            perms = self._roles[name].perms
            idx = next((i for i, p in enumerate(perms) if p.key >= perm.key), len(perms))
            if idx < len(perms) and perms[idx].key == perm.key and perms[idx].range_end == perm.range_end:
                perms[idx].perm_type = perm.perm_type
            else:
                perms.append(perm)
                perms.sort(key=lambda p: p.key)
        log.info("granted/updated a permission to a user", extra={"fields": {
            "user-name": name, "permission-name": auth_pb2.Permission.Type.Name(perm.perm_type)
            if perm.perm_type in auth_pb2.Permission.Type.values() else str(perm.perm_type)}})

    def role_revoke_permission(self, name: str, key: bytes, range_end: bytes) -> None:
        role = self._roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        kept = [p for p in role.perms if p.key != key or p.range_end != range_end]
        if len(kept) == len(role.perms):
            raise errors.PERMISSION_NOT_GRANTED
        with self._change():
            self._roles[name].perms = kept
        log.info("revoked a permission on range", extra={"fields": {"role-name": name}})

    def has_role(self, user: str, role: str) -> bool:
        u = self._users.get(user)
        return u is not None and role in u.roles
