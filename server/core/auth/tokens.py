"""Tokens: etcd's simple tokens, JWTs and the no-token provider (simple_token.go, jwt.go, options.go)."""

from __future__ import annotations

import hmac
import importlib
import logging
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ... import errors
from ...config import ConfigError, parse_go_duration
from .model import AuthInfo

log = logging.getLogger("etcdlite.auth")

DEFAULT_SIMPLE_TOKEN_TTL = 300.0  # seconds, etcd's --auth-token-ttl
DEFAULT_JWT_TTL = 300.0  # etcd's DefaultTTL (5m)
SIMPLE_TOKEN_LETTERS = string.ascii_lowercase + string.ascii_uppercase
SIMPLE_TOKEN_LENGTH = 16

VERIFY_ONLY = errors.EtcdError(errors.Code.UNKNOWN, "auth: token signing attempted with verify-only key")

# etcd's token option errors (start-up failures)
INVALID_AUTH_OPTS = "auth: invalid auth options"
INVALID_AUTH_METHOD = "auth: invalid auth signature method"
MISSING_KEY = "auth: missing key data"
KEY_MISMATCH = "auth: public and private keys don't match"


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


SWEEP_SECONDS = 1.0


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
        self._next_sweep = 0.0

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
        return self.assign_at(username, prefix, self._index)

    def assign_at(self, username: str, prefix: str, index: int) -> str:
        """The token of ``index``: a count of this process's tokens, or -- over a shared backend, as
        etcd's raft index -- the place in the log of the event that issued it on every instance."""
        token = f"{prefix}.{index}"
        if self._enabled:
            self._expire()
            self._tokens[index] = _SimpleToken(token.encode(), username, self._clock() + self._ttl)
        return token

    def unseen(self, token: str, applied: int) -> bool:
        """A token whose index is past ``applied``, the last log index applied here: another instance
        may have issued it in an event this one has not applied yet."""
        index = _index_of(token)
        return index is not None and index > applied and index not in self._tokens

    def info(self, token: str, revision: int) -> AuthInfo | None:
        index = _index_of(token)
        if index is None:
            return None
        entry = self._tokens.get(index)
        if entry is None or not hmac.compare_digest(entry.token, token.encode()):
            return None
        now = self._clock()
        if now > entry.expiry:
            del self._tokens[index]
            return None
        entry.expiry = now + self._ttl
        return AuthInfo(entry.username, revision)

    def _expire(self) -> None:
        """Forget expired tokens, at most once a second (as etcd's TTL keeper ticks): a scan of every
        token on each Authenticate would make a burst of logins quadratic."""
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        dead = [i for i, t in self._tokens.items() if now > t.expiry]
        for i in dead:
            del self._tokens[i]


def _index_of(token: str) -> int | None:
    """The index of ``<prefix>.<index>`` (Go's strconv.Atoi of what follows the one dot); None if malformed."""
    parts = token.split(".")
    if len(parts) != 2 or not _GO_ATOI.fullmatch(parts[1]):
        return None
    return int(parts[1])


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
        return str(jwt.encode(claims, self._sign_key, algorithm=self.algorithm))


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
        return bool(a.e != b.e and a.n != b.n)
    return bool(a.curve.name != b.curve.name and a.x != b.x and a.y != b.y)


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

