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
Simple tokens live in memory only and end with the process, as in etcd; over a shared backend each
is issued by an event in the shared log, so every instance keeps it (``shared_tokens``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ... import errors
from ...config import Config, ConfigError
from ...pb.authpb import auth_pb2
from ...storage.backend import SharedState
from ...storage.fsutil import write_atomic
from .model import (
    AUTH_OLD_REVISION,
    DEFAULT_BCRYPT_COST,
    NO_PASSWORD_USER,
    PERMISSION_NOT_GIVEN,
    ROOT_ROLE,
    ROOT_USER,
    STATE_FILE,
    STATE_VERSION,
    AuthInfo,
    Credentials,
    Permission,
    Role,
    User,
    hash_password,
    normalize_bcrypt_cost,
    password_matches,
)
from .perms import RangePerms, RequestChecks
from .shared_tokens import SharedSimpleTokens
from .tokens import SimpleTokens, TokenProvider, new_token_provider

log = logging.getLogger("etcdlite.auth")


# -- the store -------------------------------------------------------------------------------------
SHARED_NAME = "auth"  # the state's name in a shared backend
LeaseKeys = Callable[[int], Iterable[bytes] | None]  # a lease's attached keys; None when no such lease


def save_state_file(path: Path, state: dict[str, Any], fsync: bool = True) -> None:
    """Replace ``auth.json`` atomically; it holds password hashes, so only the owner may read it."""
    write_atomic(path, json.dumps(state, indent=1).encode(), fsync)


class AuthStore(RequestChecks):
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
        self._shared: SharedState | None = None
        self._shared_tokens: SharedSimpleTokens | None = None  # simple tokens issued through a shared log
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
            self.load_state(json.loads(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ConfigError(f"cannot load the auth state {path}: {exc}") from None

    def load_state(self, state: dict[str, Any]) -> None:
        """Take the state ``export_state`` gives (what auth.json holds)."""
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

    def use_shared(self, shared: SharedState) -> None:
        """Keep the state in a shared backend (every instance sees it) instead of the file."""
        self._shared = shared
        if isinstance(self._tokens, SimpleTokens):
            self._shared_tokens = SharedSimpleTokens(self._tokens, shared, self._check_assignable)
        data = shared.load(SHARED_NAME)
        if data is not None:
            self.replace_state(data)

    def replace_state(self, data: bytes) -> None:
        """The whole state as saved: another instance of a shared backend changed it."""
        old_users = self._users
        self._users, self._roles = {}, {}
        self.load_state(json.loads(data))
        self._perm_cache.clear()
        if self.enabled:
            self._tokens.enable()
        else:
            self._tokens.disable()
        for name, user in old_users.items():  # deleted, or a new password: their tokens end, as here
            new = self._users.get(name)
            if new is None or new.password != user.password or new.no_password != user.no_password:
                self._tokens.invalidate_user(name)

    def export_state(self) -> dict[str, Any]:
        """The persisted state as plain data (what ``auth.json`` holds; snapshots carry it too)."""
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode()

        return {
            "version": STATE_VERSION, "enabled": self.enabled, "revision": self.revision,
            "users": [{"name": u.name, "password": b64(u.password), "roles": u.roles, "no_password": u.no_password}
                      for u in self._users.values()],
            "roles": [{"name": r.name, "permissions": [
                {"key": b64(p.key), "range_end": b64(p.range_end), "type": p.perm_type} for p in r.perms]}
                for r in self._roles.values()],
        }

    def _save(self) -> None:
        if self._shared is not None:
            self._shared.save(SHARED_NAME, json.dumps(self.export_state(), indent=1).encode())
            return
        if self._path is not None:
            save_state_file(self._path, self.export_state(), self._fsync)

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
    def auth_info(self, who: Credentials | None) -> AuthInfo | None:
        """etcd's AuthInfoFromCtx, then AuthInfoFromTLS: the token's user, else the client cert's CN.

        A token that is not valid is refused even while auth is disabled, as etcd 3.5.1 does.
        ``who`` None (an in-process caller) has no credentials.
        """
        if who is None:
            return None
        token = who.token
        if token is not None:
            info = self._tokens.info(token, self.revision)
            if info is None:
                log.warning("invalid auth token")
                raise errors.INVALID_AUTH_TOKEN
            return info
        if not self._client_cert_auth or who.via_gateway or who.cert_cn is None:
            return None
        return AuthInfo(who.cert_cn, self.revision)

    def token_unseen(self, token: str, applied: int) -> bool:
        """A simple token that another instance may have issued in a log entry past ``applied``, the
        last one applied here: worth a wait for the log (a read index) before it is refused."""
        return self._shared_tokens is not None and self._shared_tokens.unseen(token, applied)

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
            token = await self._issue(name)
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

    async def _issue(self, name: str) -> str:
        if self._shared_tokens is not None:  # through the shared log: every instance knows it
            return await self._shared_tokens.issue(name)
        self._check_assignable(name)
        return self._tokens.assign(name, self.revision, self._tokens.gen_prefix())

    def _check_assignable(self, name: str) -> None:
        """etcd's checks when it applies an Authenticate."""
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = self._users.get(name)
        if user is None or user.no_password:
            raise errors.AUTH_FAILED

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
