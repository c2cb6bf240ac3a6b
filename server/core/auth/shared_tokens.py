"""Simple tokens over a shared backend: issued through the log, as etcd issues them through raft.

etcd's Authenticate checks the password, then proposes an InternalAuthenticateRequest carrying the
token's random prefix; every member applies it -- auth enabled? the user still there? -- and keeps
``<prefix>.<raft index>`` in its own simpleTokenTTLKeeper, with its own TTL refreshed by use there.
Over a shared backend the entry is an event in the shared log (``SharedState.append_event``): this
instance applies it at its place in the log and answers once it is committed; every other instance
applies it when it replays that place, after every auth change before it and before any after it.
So a token is valid on every instance from the moment Authenticate returns, and deleting its user,
changing the password or disabling auth ends it everywhere.

The log holds the user's name and the prefix, as etcd's WAL holds them -- never the password.
A request may reach an instance before that instance applied the event: ``unseen`` says so (an
index past the log it applied), and the caller then waits for the log (a read index) before the
token is looked up; a token this instance knows, or one the log it applied never issued, costs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from ... import errors
from ...storage.backend import SharedState
from .tokens import SimpleTokens

log = logging.getLogger("etcdlite.auth")

TOKEN_EVENT = "auth-token"  # the event's name in the shared log


class SharedSimpleTokens:
    """``SimpleTokens`` whose every token is issued by an event in the shared log."""

    def __init__(self, tokens: SimpleTokens, shared: SharedState, check_user: Callable[[str], None]) -> None:
        self._tokens = tokens
        self._shared = shared
        self._check_user = check_user  # raises etcd's error unless the user may be given a token now
        shared.on_event(self._applied)

    async def issue(self, name: str) -> str:
        """A new token of ``name``'s, once the log committed it (every instance knows it from then on)."""
        prefix = self._tokens.gen_prefix()
        data = json.dumps({"user": name, "prefix": prefix}).encode()
        return await self._shared.append_event(TOKEN_EVENT, data, lambda index: self._assign(name, prefix, index))

    def unseen(self, token: str, applied: int) -> bool:
        return self._tokens.unseen(token, applied)

    def _assign(self, name: str, prefix: str, index: int) -> str:
        """etcd's apply of an InternalAuthenticateRequest: the checks again, then the token."""
        self._check_user(name)
        return self._tokens.assign_at(name, prefix, index)

    def _applied(self, name: str, index: int, data: bytes) -> None:
        """Another instance's Authenticate, at its place in the log."""
        if name != TOKEN_EVENT:
            return
        try:
            event = json.loads(data)
            user, prefix = event["user"], event["prefix"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed token event", extra={"fields": {"index": index}})
            return
        if not isinstance(user, str) or not isinstance(prefix, str):
            log.warning("ignored a malformed token event", extra={"fields": {"index": index}})
            return
        try:
            self._assign(user, prefix, index)
        except errors.EtcdError:
            pass  # auth disabled or the user gone by then: no token, as etcd's apply fails
