"""``etcdlite snapshot restore``: a new data dir from a snapshot, read as a stream and checked first.

Sources: an etcd snapshot (a bbolt database, what ``etcdctl snapshot save`` stores from etcd or
from etcdlite), a snapshot in etcdlite's own format (what etcdlite streamed before it sent bbolt),
or a stopped etcd's data dir (``core.etcd_import``).

Every restore makes two passes over its source and never holds it whole.  The first checks
everything -- the SHA-256 trailer, every page and record, and that the content is a state etcd
could have reached (``storage.etcd.check``) -- and writes nothing; a refusal is one line.  The second
writes the data dir into a staging directory beside the target, which is renamed into place only
once it is complete and synced: a refused or failed restore leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..storage.backend import KeyValue
from ..storage.etcd.check import ContentChecker, check_leases, check_state
from ..storage.etcd.etcddb import EtcdDB, EtcdState, SnapshotError
from ..storage.fsutil import fsync_dir, make_private_dir, open_private
from ..storage.memory.files import MEMBER_DIR, SNAP_DIR, SNAP_SUFFIX, WAL_DIR, Segment, StorageError
from ..storage.memory.snapshot import stream_snapshot, write_snapshot_streamed
from .alarm import ALARMS_FILE, encode_alarms
from .auth.model import STATE_FILE, STATE_VERSION
from .auth.store import save_state_file
from .snapshot import auth_state

SHA256_SIZE = 32
HASH_ALIGN = 512  # etcd: a file whose size is 32 past a multiple of 512 carries a SHA-256
_CHUNK = 1 << 20


@dataclass(slots=True)
class RestoreSummary:
    source: str
    kind: str  # "snapshot" (etcd's bbolt), "etcdlite snapshot" (the older format), "etcd data dir"
    revision: int
    compact_revision: int
    versions: int
    leases: int
    users: int = 0
    roles: int = 0
    notes: list[str] = field(default_factory=list)

    def describe(self, data_dir: str) -> str:
        compact = f", compact revision {self.compact_revision}" if self.compact_revision > 0 else ""
        auth = f", {self.users} users, {self.roles} roles" if self.users or self.roles else ""
        return (f"restored {self.kind} {self.source} into {data_dir} (revision {self.revision}{compact}, "
                f"{self.versions} key versions, {self.leases} leases{auth})")


Writer = Callable[[Path], None]  # fills a staging data dir


def restore(source: str | os.PathLike[str], data_dir: str | os.PathLike[str],
            skip_hash_check: bool = False) -> RestoreSummary:
    target = Path(data_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StorageError(f'data-dir "{target}" not empty or could not be read')
    summary, writer = plan(source, skip_hash_check)
    _write_into_place(target, writer)
    return summary


def plan(source: str | os.PathLike[str], skip_hash_check: bool = False) -> tuple[RestoreSummary, Writer]:
    """Pass one over the source (everything checked, nothing written) and the writer of pass two."""
    src = Path(source)
    if src.is_dir():
        from .etcd_import import plan_import  # only a data-dir import reads etcd's WAL
        return plan_import(src)
    return _plan_file(src, skip_hash_check)


# -- files ---------------------------------------------------------------------------------------
def _go_bytes(data: bytes) -> str:
    """A byte slice as Go's %v prints it (etcdutl's wording)."""
    return "[" + " ".join(str(b) for b in data) + "]"


def _content_limit(f: BinaryIO, skip_hash_check: bool) -> int:
    """Where the snapshot ends before etcd's SHA-256 trailer, checked as ``etcdutl snapshot restore`` does."""
    size = os.fstat(f.fileno()).st_size
    if size % HASH_ALIGN != SHA256_SIZE:
        if not skip_hash_check:
            raise StorageError("snapshot missing hash but --skip-hash-check=false")
        return size
    limit = size - SHA256_SIZE
    if not skip_hash_check:
        digest = hashlib.sha256()
        f.seek(0)
        left = limit
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise StorageError("the snapshot file shrank while it was read")
            digest.update(chunk)
            left -= len(chunk)
        expected = f.read(SHA256_SIZE)
        if digest.digest() != expected:
            raise StorageError(f"expected sha256 {_go_bytes(expected)}, got {_go_bytes(digest.digest())}")
    return limit


def _plan_file(path: Path, skip_hash_check: bool) -> tuple[RestoreSummary, Writer]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        limit = _content_limit(f, skip_hash_check)
        f.seek(0)
        if f.read(8).startswith(b"etcdlite"):
            summary, index = _check_etcdlite(f, path, limit)
            return summary, lambda staging: _write_etcdlite(path, limit, index, staging)
        summary, state = check_etcd_db(f.fileno(), limit, str(path), "snapshot")
        return summary, lambda staging: _write_from_etcd_db(path, limit, state, staging)


# -- etcd's bbolt database -----------------------------------------------------------------------
def check_etcd_db(fd: int, limit: int, source: str, kind: str) -> tuple[RestoreSummary, EtcdState]:
    """Pass one over an etcd database: every page, record and invariant; writes nothing."""
    db = EtcdDB(fd, limit)
    state = db.state()
    check_state(state)
    checker = ContentChecker({le.id for le in state.leases})
    for kv in db.versions():
        checker.version(kv)
    stats = checker.finish(state.revision, max(state.compact_revision, state.scheduled_compact_revision))
    db.finish_check()
    summary = RestoreSummary(source, kind, state.revision, restored_compact_revision(state), stats.versions,
                             len(state.leases), len(state.auth.users), len(state.auth.roles))
    if state.ignored_buckets:
        summary.notes.append(f"ignored buckets etcdlite does not know: {', '.join(state.ignored_buckets)}")
    return summary, state


def restored_compact_revision(state: EtcdState) -> int:
    """A scheduled compaction etcd had not finished, etcd finishes at start-up: so does the restore."""
    return max(state.compact_revision, state.scheduled_compact_revision, 0)


def by_revision(versions: Iterable[KeyValue]) -> Iterator[tuple[int, list[KeyValue]]]:
    group: list[KeyValue] = []
    for kv in versions:
        if group and kv.mod_revision != group[0].mod_revision:
            yield group[0].mod_revision, group
            group = []
        group.append(kv)
    if group:
        yield group[0].mod_revision, group


def write_state(staging: Path, state: EtcdState, versions: Iterable[KeyValue]) -> None:
    """An etcdlite data dir holding ``state``: snapshot, empty log, auth and alarms (members are not
    carried over: as with ``etcdutl snapshot restore``, the flags of the restored member define them)."""
    member = staging / MEMBER_DIR
    snap_dir, wal_dir = member / SNAP_DIR, member / WAL_DIR
    for d in (member, snap_dir, wal_dir):
        make_private_dir(d)
    index = state.consistent_index
    leases = [(le.id, le.ttl) for le in state.leases]
    write_snapshot_streamed(snap_dir, index, state.revision, restored_compact_revision(state), leases,
                            by_revision(versions))
    Segment.create(wal_dir, index + 1, sync=True).close()
    save_state_file(member / STATE_FILE, auth_state(state.auth, STATE_VERSION))
    if state.alarms:
        _write_file(member / ALARMS_FILE, encode_alarms((a, m) for m, a in state.alarms))
    fsync_dir(member)


def _write_from_etcd_db(path: Path, limit: int, state: EtcdState, staging: Path) -> None:
    with open(path, "rb") as f:
        write_state(staging, state, EtcdDB(f.fileno(), limit).versions())


# -- etcdlite's own snapshot format --------------------------------------------------------------
def _check_etcdlite(f: BinaryIO, path: Path, limit: int) -> tuple[RestoreSummary, int]:
    """Pass one over an etcdlite snapshot; returns the summary and the log index it holds."""
    f.seek(0)
    try:
        head, groups = stream_snapshot(f)
        if head.body_len + 4 > limit:
            raise ValueError(f"truncated (the header says {head.body_len + 4} bytes, the file has {limit})")
        checker = ContentChecker(check_leases(head.leases))
        for revision, kvs in groups:
            for kv in kvs:
                if kv.mod_revision != revision:
                    raise SnapshotError(f"the snapshot's content is impossible: key {kv.key!r} at revision "
                                        f"{kv.mod_revision} is listed under revision {revision}")
                checker.version(kv)
    except ValueError as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{path} is not a sound etcdlite snapshot ({exc})") from None
    stats = checker.finish(head.revision, head.compact_revision)
    summary = RestoreSummary(str(path), "etcdlite snapshot", head.revision, head.compact_revision, stats.versions,
                             len(head.leases))
    return summary, head.index


def _write_etcdlite(path: Path, limit: int, index: int, staging: Path) -> None:
    """The file (without its SHA-256) is a data-dir snapshot as it is: copied, then an empty log."""
    member = staging / MEMBER_DIR
    snap_dir, wal_dir = member / SNAP_DIR, member / WAL_DIR
    for d in (member, snap_dir, wal_dir):
        make_private_dir(d)
    snap = snap_dir / f"{index:016x}{SNAP_SUFFIX}"
    with open(path, "rb") as src:
        _write_file(snap, _read_upto(src, limit))
    Segment.create(wal_dir, index + 1, sync=True).close()
    fsync_dir(member)


def _read_upto(f: BinaryIO, limit: int) -> Iterator[bytes]:
    left = limit
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


# -- the target ----------------------------------------------------------------------------------
def _write_file(path: Path, data: bytes | Iterable[bytes]) -> None:
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_EXCL), "wb") as f:
        for chunk in ([data] if isinstance(data, bytes) else data):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def _write_into_place(target: Path, writer: Writer) -> None:
    """Build the data dir in a staging directory beside ``target``; rename it in once complete."""
    target = target.absolute()
    staging = target.parent / f".{target.name}.restoring-{os.getpid()}"
    if staging.exists():
        raise StorageError(f"{staging} is left from a restore that was killed: remove it")
    make_private_dir(staging)  # and missing parents, as the data dir's own start-up makes them
    try:
        writer(staging)
        fsync_dir(staging)
        if target.exists():  # an empty directory: the member dir moves into it
            os.rename(staging / MEMBER_DIR, target / MEMBER_DIR)
            os.rmdir(staging)
            fsync_dir(target)
        else:
            os.rename(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
