"""``--max-request-bytes`` measured as etcd measures it: on the request wrapped for raft.

etcd refuses a write ("etcdserver: request is too large") when its ``InternalRaftRequest`` encodes to
more than ``--max-request-bytes`` (etcdserver/v3_server.go, processInternalRaftRequestOnce): the
request as a field of that message, plus a ``RequestHeader`` holding a request ID and, for a caller
with a credential, its user name and auth revision. A request of exactly the limit is thus refused,
and where the line falls depends on the member ID: the request ID is (the member ID's low 16 bits)
<< 48 | (a millisecond clock's low 40 bits) << 8 | a counter (pkg/idutil).
"""

from __future__ import annotations

import time
from typing import Any

from .. import errors
from .auth.model import Credentials
from .auth.store import AuthStore

_HEADER_TAG = 2  # InternalRaftRequest.header is field 100: a two-byte tag
_REQUEST_TAG = 1  # put (4), delete_range (5), txn (6), lease_grant (8): one byte
# Requests further than this below the limit are let through without looking up the caller; a user
# name longer than this (never seen in practice) could put a request right under the limit over it.
NAME_SLACK_BYTES = 4096
# the most a header without a user adds: tags, lengths, a 10-byte request ID and a revision
MAX_PLAIN_OVERHEAD = 48


def varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_len(tag: int, size: int) -> int:
    return tag + varint_len(size) + size


class RaftSizeLimit:
    """``check(request, who)`` raises etcd's REQUEST_TOO_LARGE as etcd would for this member."""

    def __init__(self, limit: int, member_id: int, auth: AuthStore) -> None:
        self.limit = limit
        self._id_prefix = (member_id & 0xFFFF) << 48
        self._auth = auth

    def _request_id(self) -> int:
        return self._id_prefix | ((time.time_ns() // 1_000_000) & (2**40 - 1)) << 8

    def size(self, request_size: int, username: str = "", auth_revision: int = 0) -> int:
        """Bytes of the InternalRaftRequest carrying a request of ``request_size`` bytes."""
        header = 1 + varint_len(self._request_id())
        if username:
            header += _field_len(1, len(username.encode()))
        if auth_revision:
            header += 1 + varint_len(auth_revision)
        return _field_len(_HEADER_TAG, header) + _field_len(_REQUEST_TAG, request_size)

    def check(self, request: Any, who: Credentials | None) -> None:
        request_size = request.ByteSize()
        if request_size + MAX_PLAIN_OVERHEAD + NAME_SLACK_BYTES <= self.limit:
            return  # far below the limit whatever the header: the common case, without building it
        plain = self.size(request_size)
        if plain > self.limit:
            raise errors.REQUEST_TOO_LARGE
        if plain + NAME_SLACK_BYTES <= self.limit:
            return
        info = self._auth.auth_info(who)  # etcd's AuthInfoFromCtx, which fills the header
        if info is not None and self.size(request_size, info.username, info.revision) > self.limit:
            raise errors.REQUEST_TOO_LARGE
