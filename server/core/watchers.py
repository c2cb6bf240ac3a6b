"""The watch hub's data: what a watch asks for, a watcher, a response, and watchers grouped by range
(etcd's mvcc/watcher.go, watcher_group.go)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ..storage.backend import KeyValue

if TYPE_CHECKING:
    from .watch import WatchStream

AUTO_WATCH_ID = 0  # clientv3.AutoWatchID
INVALID_WATCH_ID = -1  # clientv3.InvalidWatchID

ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"


class WatchError(Exception):
    """A watch create that etcd refuses; the message is etcd's cancel reason."""


class StreamClosed(Exception):
    """The stream was closed (by its owner, or by the hub shutting down)."""


class State(Enum):
    SYNCED = "synced"
    UNSYNCED = "unsynced"
    VICTIM = "victim"
    COMPACTED = "compacted"  # canceled by compaction; its id stays taken on its stream, as in etcd
    CANCELED = "canceled"


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What a watch create asks for.  ``end``: None is one key, b"" is every key from ``key`` on."""

    key: bytes
    end: bytes | None = None
    start_revision: int = 0  # 0: from the next revision
    watch_id: int = AUTO_WATCH_ID
    no_put: bool = False
    no_delete: bool = False
    # carried for the gRPC layer, as etcd's serverWatchStream keeps them
    prev_kv: bool = False
    fragment: bool = False
    progress_notify: bool = False


class Watcher:
    __slots__ = ("id", "spec", "key", "end", "min_rev", "stream", "state")

    def __init__(self, watch_id: int, spec: WatchSpec, stream: WatchStream) -> None:
        self.id = watch_id
        self.spec = spec
        self.key = spec.key
        self.end = spec.end
        self.min_rev = 0
        self.stream = stream
        self.state = State.CANCELED

    def contains(self, key: bytes) -> bool:
        end = self.end
        if end is None:
            return key == self.key
        return self.key <= key and (end == b"" or key < end)

    def filter(self, events: list[KeyValue]) -> list[KeyValue]:
        spec = self.spec
        if spec.no_put:
            events = [kv for kv in events if kv.is_tombstone]
        if spec.no_delete:
            events = [kv for kv in events if not kv.is_tombstone]
        return events

    def __repr__(self) -> str:
        return f"Watcher(id={self.id}, key={self.key!r}, end={self.end!r}, min_rev={self.min_rev}, {self.state.value})"


@dataclass(slots=True, eq=False)
class WatchResponse:
    """One response for a stream; ``control`` ones (created, canceled, progress answers) are never dropped."""

    watch_id: int
    revision: int
    events: list[KeyValue] = field(default_factory=list)
    watcher: Watcher | None = None
    created: bool = False
    canceled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0
    control: bool = False


def prefix_end(prefix: bytes) -> bytes | None:
    """clientv3.GetPrefixRangeEnd: the first key after every key starting with ``prefix`` (None: no end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class WatcherGroup:
    """Watchers by what they watch: one key, a prefix, or any other range (etcd's watcherGroup)."""

    def __init__(self, watchers: Iterable[Watcher] = ()) -> None:
        self.watchers: dict[Watcher, None] = {}  # insertion-ordered set
        self._keys: dict[bytes, set[Watcher]] = {}
        self._prefixes: dict[bytes, set[Watcher]] = {}
        self._prefix_lengths: dict[int, int] = {}  # prefix length -> number of prefixes of it
        self._ranges: set[Watcher] = set()
        for w in watchers:
            self.add(w)

    def __len__(self) -> int:
        return len(self.watchers)

    def __bool__(self) -> bool:
        return bool(self.watchers)

    def __contains__(self, w: Watcher) -> bool:
        return w in self.watchers

    def add(self, w: Watcher) -> None:
        self.watchers[w] = None
        if w.end is None:
            self._keys.setdefault(w.key, set()).add(w)
        elif _is_prefix(w):
            group = self._prefixes.get(w.key)
            if group is None:
                group = self._prefixes[w.key] = set()
                n = len(w.key)
                self._prefix_lengths[n] = self._prefix_lengths.get(n, 0) + 1
            group.add(w)
        else:
            self._ranges.add(w)

    def remove(self, w: Watcher) -> bool:
        if w not in self.watchers:
            return False
        del self.watchers[w]
        if w.end is None:
            _discard(self._keys, w.key, w)
        elif _is_prefix(w):
            if _discard(self._prefixes, w.key, w):
                n = len(w.key)
                self._prefix_lengths[n] -= 1
                if not self._prefix_lengths[n]:
                    del self._prefix_lengths[n]
        else:
            self._ranges.discard(w)
        return True

    def to_back(self, w: Watcher) -> None:
        """Move ``w`` to the end of the iteration order (a fair turn for the others)."""
        del self.watchers[w]
        self.watchers[w] = None

    def matching(self, key: bytes) -> Iterator[Watcher]:
        """Every watcher whose range holds ``key``."""
        single = self._keys.get(key)
        if single:
            yield from single
        if self._prefix_lengths:
            prefixes = self._prefixes
            for n in self._prefix_lengths:
                if n <= len(key):
                    group = prefixes.get(key[:n])
                    if group:
                        yield from group
        for w in self._ranges:
            if w.contains(key):
                yield w


def _is_prefix(w: Watcher) -> bool:
    return bool(w.end) and w.end == prefix_end(w.key)


def _discard(index: dict[bytes, set[Watcher]], key: bytes, w: Watcher) -> bool:
    """Remove ``w`` from ``index[key]``; True when that left the set empty (and it was dropped)."""
    group = index[key]
    group.discard(w)
    if group:
        return False
    del index[key]
    return True
