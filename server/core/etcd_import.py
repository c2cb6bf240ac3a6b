"""Importing a stopped etcd's data dir: ``member/snap/db`` plus the WAL entries it does not hold yet.

etcd applies a committed raft entry to its bbolt database and commits that database every 100 ms,
recording the last applied entry as ``meta/consistent_index``; on restart it re-applies the WAL's
entries after it.  The import does the same with etcdlite's own appliers:

* KV (``Put``, ``DeleteRange``, ``Txn``, ``Compaction``), lease (``LeaseGrant``, ``LeaseRevoke``),
  ``Alarm`` and auth (users, roles, permissions, enable/disable) requests are applied in order
  (``core.raftapply``; one that fails, fails as in etcd: without changing anything);
* entries that change nothing etcdlite keeps are skipped: raft's empty entries, membership changes
  (as with ``etcdutl snapshot restore``, the restored member's flags define the cluster), cluster
  version and member attribute updates, lease checkpoints, reads, authentications, and etcd's v2
  store writes under ``/0/`` (its membership records);
* anything else -- a v2 API write, an entry this etcdlite does not know -- refuses the import with
  one line naming the entry: start etcd once and stop it cleanly (its database then holds
  everything), and import again.

Entries past the last HardState's commit index were never acknowledged and are left out.  With no
entry to apply (etcd was stopped cleanly) the import streams like a snapshot restore; otherwise the
database is loaded into memory to apply them (as etcdlite itself would hold it).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from ..storage.backend import KeyValue
from ..storage.etcd.check import check_state
from ..storage.etcd.etcddb import EtcdDB, EtcdState, LeaseRecord
from ..storage.etcd.wal import WalTail, read_tail
from ..storage.memory.backend import MemoryBackend
from ..storage.memory.files import StorageError
from ..storage.memory.snapshot import SnapshotState, restore_state
from .lease import Lessor
from .raftapply import Applier, Step, decode
from .restore import RestoreSummary, by_revision, check_etcd_db, restored_compact_revision, write_state


def plan_import(src: Path) -> tuple[RestoreSummary, Callable[[Path], None]]:
    db_path = src / "member" / "snap" / "db"
    if not db_path.is_file():
        raise StorageError(f"{src} is neither a snapshot file nor an etcd data dir (no member/snap/db)")
    fd = os.open(db_path, os.O_RDONLY)
    try:
        _check_stopped(fd, src)
        limit = os.fstat(fd).st_size
        summary, state = check_etcd_db(fd, limit, str(src), "etcd data dir")
        tail = read_tail(src / "member" / "wal", state.consistent_index)
        steps = [decode(e) for e in tail.entries if e.index <= tail.commit]
        _note_tail(summary, tail, steps)
        if not any(s.request is not None for s in steps):
            return summary, lambda staging: _write_streamed(db_path, limit, state, staging)
        state, versions = _apply(fd, limit, state, steps)
    finally:
        os.close(fd)
    summary.revision, summary.compact_revision = state.revision, restored_compact_revision(state)
    summary.versions, summary.leases = len(versions), len(state.leases)
    summary.users, summary.roles = len(state.auth.users), len(state.auth.roles)
    return summary, lambda staging: write_state(staging, state, versions)


def _check_stopped(fd: int, src: Path) -> None:
    """A running etcd holds its database locked (bbolt's flock): importing it would race its writes."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StorageError(f"the etcd data dir {src} is in use: stop etcd first") from None


def _note_tail(summary: RestoreSummary, tail: WalTail, steps: list[Step]) -> None:
    applied = sum(1 for s in steps if s.request is not None)
    if tail.entries:
        summary.notes.append(f"applied {applied} of the {len(steps)} committed WAL entries after the database's "
                             f"consistent index ({len(steps) - applied} change nothing etcdlite keeps)")
    uncommitted = len(tail.entries) - len(steps)
    if uncommitted:
        summary.notes.append(f"left out {uncommitted} WAL entries past the commit index (never acknowledged)")
    if tail.torn_bytes:
        summary.notes.append("dropped a torn record at the end of etcd's WAL")


def _write_streamed(db_path: Path, limit: int, state: EtcdState, staging: Path) -> None:
    with open(db_path, "rb") as f:
        write_state(staging, state, EtcdDB(f.fileno(), limit).versions())


def _apply(fd: int, limit: int, state: EtcdState, steps: list[Step]) -> tuple[EtcdState, list[KeyValue]]:
    """Load the database into an in-memory backend, apply the entries as etcd would, return the result."""
    backend = MemoryBackend(None)
    backend.open()
    store = backend.store
    lessor = Lessor(0)  # lease IDs in the WAL are chosen already: no generator is asked
    backend.set_lease_attacher(lessor)
    groups = list(by_revision(EtcdDB(fd, limit).versions()))
    store.begin_bulk_load()
    restore_state(SnapshotState(state.consistent_index, state.revision, restored_compact_revision(state),
                                [(le.id, le.ttl) for le in state.leases], groups), store)
    store.end_bulk_load()
    del groups
    lessor.restore(backend.leases(), ((kv.key, kv.lease) for kv in backend.all_live() if kv.lease))
    applier = Applier(backend, lessor, set(state.alarms), state.auth)
    for step in steps:
        if step.request is not None:
            applier.apply(step.request)
    keys = backend.capture_key_space()
    state.revision = keys.revision
    state.compact_revision = state.scheduled_compact_revision = keys.compact_revision
    state.leases = [LeaseRecord(lease_id, ttl) for lease_id, ttl in sorted(keys.leases.items())]
    state.alarms = sorted(applier.alarms)
    state.auth = applier.auth()
    state.consistent_index, state.term = steps[-1].index, steps[-1].term
    check_state(state)
    return state, list(keys.versions)
