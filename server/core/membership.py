"""Cluster membership of a one-member etcd: this member, plus members added through the API.

Added members never start (etcdlite does not speak raft), so they stay
"unstarted", learners cannot be promoted, and removing this member fails
as it does in a one-member etcd.  The list survives restarts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .. import errors
from ..storage.backend import SharedState
from ..storage.fsutil import write_atomic

SHARED_NAME = "members"  # the document's name in a shared backend


@dataclass
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False


def compute_member_id(peer_urls: list[str], cluster_token: str, now: float | None = None) -> int:
    """etcd's computeMemberId: sha1 of the sorted peer URLs, the cluster token and (for added members) the time."""
    b = "".join(sorted(peer_urls)).encode() + cluster_token.encode()
    if now is not None:
        b += str(int(now)).encode()
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "big")


def _check_urls(urls: list[str]) -> None:
    if not urls:
        raise errors.MEMBER_BAD_URLS
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "unix", "unixs") or not parts.netloc:
            raise errors.MEMBER_BAD_URLS


class Membership:
    def __init__(self, local: Member, cluster_token: str, path: Path | None, fsync: bool = True) -> None:
        self.local = local
        self._token = cluster_token
        self._path = path
        self._fsync = fsync
        self._others: dict[int, Member] = {}
        # with a shared backend: the other instances serving now (registered, heartbeating), and the
        # IDs removed through the API (an instance whose ID is here is refused service)
        self._shared: SharedState | None = None
        self._instances: Callable[[], list[Member]] = list
        self.removed: set[int] = set()
        if path is not None and path.exists():
            self.replace(path.read_bytes())

    def use_shared(self, shared: SharedState, instances: Callable[[], list[Member]]) -> None:
        """Keep the added and removed members in a shared backend; ``instances`` lists the live ones."""
        self._shared = shared
        self._instances = instances
        data = shared.load(SHARED_NAME)
        if data is not None:
            self.replace(data)

    def replace(self, data: bytes) -> None:
        """The saved list (a shared backend's instances apply each other's changes)."""
        saved = json.loads(data)
        if isinstance(saved, list):  # the data dir's file: the added members
            saved = {"added": saved, "removed": []}
        self._others = {m.id: m for m in (Member(**m) for m in saved["added"]) if m.id != self.local.id}
        self.removed = {int(i) for i in saved["removed"]}

    async def refresh(self) -> None:
        """The serving instances of a shared backend read afresh: a request about members sees every
        instance started before it (etcd knows its initial cluster's members from the start)."""
        if self._shared is not None:
            await self._shared.refresh_instances()

    @property
    def local_removed(self) -> bool:
        return self.local.id in self.removed

    def members(self) -> list[Member]:
        """Sorted by ID, as etcd lists them."""
        found = {m.id: m for m in self._instances() if m.id not in self.removed}
        for m in (self.local, *self._others.values()):
            found.setdefault(m.id, m)
        return sorted(found.values(), key=lambda m: m.id)

    def _save(self) -> None:
        added = [asdict(m) for m in self._others.values()]
        if self._shared is not None:
            self._shared.save(SHARED_NAME, json.dumps({"added": added, "removed": sorted(self.removed)}).encode())
        elif self._path is not None:
            write_atomic(self._path, json.dumps(added).encode(), self._fsync)

    def _check_peer_urls_free(self, urls: list[str], except_id: int = 0) -> None:
        for m in self.members():
            if m.id != except_id and set(m.peer_urls) & set(urls):
                raise errors.PEER_URL_EXIST

    def add(self, peer_urls: list[str], is_learner: bool) -> Member:
        _check_urls(peer_urls)
        self._check_peer_urls_free(peer_urls)
        member = Member(compute_member_id(peer_urls, self._token, time.time()), "", list(peer_urls),
                        is_learner=is_learner)
        if member.id == self.local.id or member.id in self._others:
            raise errors.MEMBER_EXIST
        self._others[member.id] = member
        self._save()
        return member

    def remove(self, member_id: int) -> None:
        serving = {m.id for m in self._instances() if m.id not in self.removed} | {self.local.id}
        if member_id in serving:
            if len(serving) == 1:
                # the only started member: removing it would leave no quorum
                raise errors.MEMBER_NOT_ENOUGH_STARTED
            self.removed.add(member_id)  # that instance sees it and stops serving
        elif self._others.pop(member_id, None) is None:
            raise errors.MEMBER_NOT_FOUND
        self._save()

    def update(self, member_id: int, peer_urls: list[str]) -> None:
        member = self.local if member_id == self.local.id else self._others.get(member_id)
        if member is None:
            raise errors.MEMBER_NOT_FOUND
        _check_urls(peer_urls)
        self._check_peer_urls_free(peer_urls, except_id=member_id)
        member.peer_urls = list(peer_urls)
        # etcd replaces the raft attributes wholesale, and they carry the learner flag
        member.is_learner = False
        if member is not self.local:
            self._save()

    def promote(self, member_id: int) -> None:
        member = self._others.get(member_id)
        if member is None:
            if member_id == self.local.id:
                raise errors.MEMBER_NOT_LEARNER
            raise errors.MEMBER_NOT_FOUND
        if not member.is_learner:
            raise errors.MEMBER_NOT_LEARNER
        # an added learner never starts, so it is never in sync with the leader
        raise errors.LEARNER_NOT_READY
