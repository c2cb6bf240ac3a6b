"""Importing a stopped etcd's data dir: ``member/snap/db`` plus the WAL entries it does not hold yet.

etcd applies a committed raft entry to its bbolt database and commits that database every 100 ms,
recording the last applied entry as ``meta/consistent_index``; on restart it re-applies the WAL's
entries after it.  The import does the same with etcdlite's own appliers:

* ``Put``, ``DeleteRange``, ``Txn``, ``Compaction``, ``LeaseGrant``, ``LeaseRevoke`` and ``Alarm``
  requests are applied in order (one that fails, fails as in etcd: without changing anything);
* entries that change nothing etcdlite keeps are skipped: raft's empty entries, membership changes
  (as with ``etcdutl snapshot restore``, the restored member's flags define the cluster), cluster
  version and member attribute updates, lease checkpoints, reads, authentications, and etcd's v2
  store writes under ``/0/`` (its membership records);
* anything else -- an auth change, a v2 API write, an entry this etcdlite does not know -- refuses
  the import with one line naming the entry: start etcd once and stop it cleanly (its database then
  holds everything), and import again.

Entries past the last HardState's commit index were never acknowledged and are left out.  With no
entry to apply (etcd was stopped cleanly) the import streams like a snapshot restore; otherwise the
database is loaded into memory to apply them (as etcdlite itself would hold it).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import errors, etcdsnap
from .etcddb import EtcdDB, EtcdState, LeaseRecord, SnapshotError
from .etcdwal import ENTRY_NORMAL, RaftEntry, WalTail, read_tail
from .kv import KVApplier
from .lease import Lessor
from .mvcc import MVCCStore
from .pb.etcdserverpb import rpc_pb2 as pb
from .protowire import WireError, iter_fields
from .restore import RestoreSummary, by_revision, check_etcd_db, restored_compact_revision, write_state
from .snapcheck import check_state
from .wal import SnapshotState, StorageError, reattach_leases, restore_state

Request = Any  # one of the rpc_pb2 request messages below
_APPLIED = {4: pb.PutRequest, 5: pb.DeleteRangeRequest, 6: pb.TxnRequest, 7: pb.CompactionRequest,
            8: pb.LeaseGrantRequest, 9: pb.LeaseRevokeRequest, 10: pb.AlarmRequest}
# InternalRaftRequest fields that change nothing etcdlite keeps
_SKIPPED = {1, 3, 11, 100, 1012, 1300, 1301, 1302}  # ID, range, lease checkpoint, header, authenticate, cluster
_AUTH = {1000: "AuthEnable", 1011: "AuthDisable", 1100: "UserAdd", 1101: "UserDelete", 1102: "UserGet",
         1103: "UserChangePassword", 1104: "UserGrantRole", 1105: "UserRevokeRole", 1106: "UserList",
         1107: "RoleList", 1200: "RoleAdd", 1201: "RoleDelete", 1202: "RoleGet", 1203: "RoleGrantPermission",
         1204: "RoleRevokePermission"}
_V2, _V2_PATH = 2, 3
_MEMBER_ID = 0  # lease IDs in the WAL are already chosen: the lessor's generator is never asked


@dataclass(slots=True)
class Step:
    index: int
    term: int
    request: Request | None  # None: nothing to apply


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
        steps = [_step(e) for e in tail.entries if e.index <= tail.commit]
        _note_tail(summary, tail, steps)
        if not any(s.request is not None for s in steps):
            return summary, lambda staging: _write_streamed(db_path, limit, state, staging)
        state, versions = _apply(fd, limit, state, steps)
    finally:
        os.close(fd)
    summary.revision, summary.compact_revision = state.revision, restored_compact_revision(state)
    summary.versions, summary.leases = len(versions), len(state.leases)
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


def _step(entry: RaftEntry) -> Step:
    if entry.type != ENTRY_NORMAL or not entry.data:
        return Step(entry.index, entry.term, None)  # membership changes, a new leader's empty entry
    try:
        request = _internal_request(entry)
    except WireError:
        # etcd's "backward compatible" form: a bare v2 Request (how it publishes its member
        # attributes until the cluster version is known)
        path = _v2_path(entry.data)
        if path is None:
            raise _cannot(entry, "neither an InternalRaftRequest nor a v2 Request") from None
        _check_v2_path(entry, path)
        return Step(entry.index, entry.term, None)
    return Step(entry.index, entry.term, request)


def _internal_request(entry: RaftEntry) -> Request | None:
    request = None
    for num, _, value in iter_fields(entry.data):
        if num in _APPLIED:
            if not isinstance(value, bytes):
                raise WireError(f"field {num} is not a message")
            try:
                request = _APPLIED[num].FromString(value)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
                raise WireError(str(exc)) from None
        elif num == _V2:
            path = _v2_path(value) if isinstance(value, bytes) else None
            if path is None:
                raise WireError("field 2 is not a v2 Request")
            _check_v2_path(entry, path)
        elif num in _AUTH:
            raise _cannot(entry, f"an auth change ({_AUTH[num]})")
        elif num not in _SKIPPED:
            raise _cannot(entry, f"a request etcdlite does not know (InternalRaftRequest field {num})")
    return request


def _v2_path(data: bytes) -> bytes | None:
    """A v2 Request's path (field 3, beside its method in field 2); None if ``data`` is not one."""
    try:
        fields = {num: value for num, _, value in iter_fields(data)}
    except WireError:
        return None
    method, path = fields.get(2), fields.get(_V2_PATH)
    return path if isinstance(method, bytes) and isinstance(path, bytes) else None


def _check_v2_path(entry: RaftEntry, path: bytes) -> None:
    if not path.startswith(b"/0/"):  # etcd's own membership and version records in its v2 store
        raise _cannot(entry, f"a v2 API write to {path.decode(errors='replace')!r}")


def _cannot(entry: RaftEntry, what: str) -> SnapshotError:
    return SnapshotError(f"etcd's WAL entry {entry.index} after the database is {what}, which the import does not "
                         f"apply; start etcd once and stop it cleanly (its database then holds it), then import again")


def _write_streamed(db_path: Path, limit: int, state: EtcdState, staging: Path) -> None:
    with open(db_path, "rb") as f:
        write_state(staging, state, EtcdDB(f.fileno(), limit).versions())


def _apply(fd: int, limit: int, state: EtcdState, steps: list[Step]) -> tuple[EtcdState, list]:
    """Load the database into a store, apply the entries as etcd would, return the result."""
    store = MVCCStore()
    lessor = Lessor(store.write_txn, _MEMBER_ID)
    store.leases = lessor
    kv = KVApplier(store, lessor)
    groups = list(by_revision(EtcdDB(fd, limit).versions()))
    store.begin_bulk_load()
    restore_state(SnapshotState(state.consistent_index, state.revision, restored_compact_revision(state),
                                [(le.id, le.ttl) for le in state.leases], groups), store, lessor)
    store.end_bulk_load()
    del groups
    reattach_leases(store, lessor)
    alarms = set(state.alarms)
    for step in steps:
        if step.request is not None:
            _apply_one(step.request, kv, lessor, alarms)
    state.revision = store.current_revision
    state.compact_revision = state.scheduled_compact_revision = store.compact_main_revision
    state.leases = sorted((LeaseRecord(le.id, le.ttl) for le in lessor.leases()), key=lambda le: le.id)
    state.alarms = sorted(alarms)
    state.consistent_index, state.term = steps[-1].index, steps[-1].term
    check_state(state)
    return state, etcdsnap.key_bucket_versions(store)


def _apply_one(request: Request, kv: KVApplier, lessor: Lessor, alarms: set[tuple[int, int]]) -> None:
    try:
        if isinstance(request, pb.PutRequest):
            kv.put(request)
        elif isinstance(request, pb.DeleteRangeRequest):
            kv.delete_range(request)
        elif isinstance(request, pb.TxnRequest):
            kv.txn(request)
        elif isinstance(request, pb.CompactionRequest):
            kv.compact(request)
        elif isinstance(request, pb.LeaseGrantRequest):
            lessor.grant(request.ID, request.TTL)
        elif isinstance(request, pb.LeaseRevokeRequest):
            lessor.revoke(request.ID)
        elif isinstance(request, pb.AlarmRequest):
            pair = (request.memberID, request.alarm)
            if request.action == pb.AlarmRequest.ACTIVATE and request.alarm != pb.NONE:
                alarms.add(pair)
            elif request.action == pb.AlarmRequest.DEACTIVATE:
                alarms.discard(pair)
    except errors.EtcdError:
        pass  # etcd answered this entry with an error and changed nothing; so does the import
