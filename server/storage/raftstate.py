"""The raft term and index a one-member etcd reports, counted without raft.

etcd's numbers come from its raft log; etcdlite has none, so it counts as etcd counts:

* a new member boots at term 1 with one entry (adding itself), wins its first election (term 2, an
  empty entry), then publishes its attributes and the cluster version: index 4, term 2;
* every start after that is a new election: term + 1, and two entries (the empty one, the attributes);
* every write that goes through raft is one more entry.  Those are the backend's durable steps
  (``Backend.durable_index``: for the embedded store, every record of its log -- puts, deletes, txns
  that write, lease grants and revokes, compactions), so etcd's raftIndex is the start-ups' entries
  counted here plus the backend's durable index.  Auth, alarm and member changes, which etcd also
  commits through raft, are not backend steps and are not counted.

Core asks a ``RaftTermStore`` once per start (``begin_term``) and adds the backend's index itself, so
a backend brings its own notion of index and nothing else.  ``RaftTermFile`` keeps the count in the
data dir (``member/raft``), beside the other member state, whatever the backend.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .fsutil import write_atomic

log = logging.getLogger("etcdlite")

FIRST_TERM = 2
FIRST_ENTRIES = 4  # ConfChange(add self), the first leader's empty entry, member attributes, cluster version
RESTART_ENTRIES = 2  # the new leader's empty entry, member attributes
FILE_NAME = "raft"


@dataclass(frozen=True)
class RaftState:
    term: int
    base_index: int  # raft entries that are not backend steps (the start-ups')


class RaftTermStore(Protocol):
    def begin_term(self) -> RaftState:
        """Count this start as a one-member etcd's election; kept before anything is served."""
        ...


class RaftTermFile:
    """The count in ``<member dir>/raft`` (JSON: term, base_index), replaced atomically."""

    def __init__(self, member_dir: Path, fsync: bool = True) -> None:
        self.path = member_dir / FILE_NAME
        self._fsync = fsync

    def _read(self) -> RaftState | None:
        try:
            doc = json.loads(self.path.read_text())
            return RaftState(int(doc["term"]), int(doc["base_index"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable raft state; starting the count again",
                        extra={"fields": {"path": str(self.path), "error": str(exc)}})
            return None

    def begin_term(self) -> RaftState:
        before = self._read()
        if before is None:
            state = RaftState(FIRST_TERM, FIRST_ENTRIES)
        else:
            state = RaftState(before.term + 1, before.base_index + RESTART_ENTRIES)
        payload = json.dumps({"term": state.term, "base_index": state.base_index}).encode()
        write_atomic(self.path, payload, fsync=self._fsync)
        return state
