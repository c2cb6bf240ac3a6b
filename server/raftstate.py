"""The raft term and index a one-member etcd reports, kept in the data dir (``member/raft``).

etcd's numbers come from its raft log; etcdlite has no raft, so it counts as etcd counts:

* a new member boots at term 1 with one entry (adding itself), wins its first election (term 2, an
  empty entry), then publishes its attributes and the cluster version: index 4, term 2;
* every start after that is a new election: term + 1, and two entries (the empty one, the attributes);
* every write that goes through raft is one more entry: in etcdlite, every record of its own log
  (puts, deletes, txns that write, lease grants and revokes, compactions), so raftIndex is the
  entries counted here plus the log's durable index.  Auth, alarm and member changes, which etcd
  also commits through raft, are not in etcdlite's log and are not counted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .fsutil import write_atomic

log = logging.getLogger("etcdlite")

FIRST_TERM = 2
FIRST_ENTRIES = 4  # ConfChange(add self), the first leader's empty entry, member attributes, cluster version
RESTART_ENTRIES = 2  # the new leader's empty entry, member attributes
FILE_NAME = "raft"


@dataclass(frozen=True)
class RaftState:
    term: int
    base_index: int  # raft entries etcdlite's log does not hold (the start-ups')


def _read(path: Path) -> RaftState | None:
    try:
        doc = json.loads(path.read_text())
        return RaftState(int(doc["term"]), int(doc["base_index"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable raft state; starting the count again",
                    extra={"fields": {"path": str(path), "error": str(exc)}})
        return None


def start_term(member_dir: Path, fsync: bool = True) -> RaftState:
    """This start's term and entry count, written before anything is served."""
    path = member_dir / FILE_NAME
    before = _read(path)
    if before is None:
        state = RaftState(FIRST_TERM, FIRST_ENTRIES)
    else:
        state = RaftState(before.term + 1, before.base_index + RESTART_ENTRIES)
    write_atomic(path, json.dumps({"term": state.term, "base_index": state.base_index}).encode(), fsync=fsync)
    return state
