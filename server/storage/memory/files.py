"""The data dir's files: layout, the segment being appended to, atomic snapshot files, the lock.

    member/lock                      flock'ed while a server uses the data dir
    member/snap/<index:016x>.snap    the whole state after log entry <index>; the newest one is used
    member/wal/<first:016x>.wal      a log segment holding entries <first>, <first>+1, ...
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

from ..fsutil import fsync_dir, open_private
from .records import segment_header

MEMBER_DIR = "member"
SNAP_DIR = "snap"
WAL_DIR = "wal"
SNAP_SUFFIX = ".snap"
WAL_SUFFIX = ".wal"


def refuse(message: str) -> StorageError:
    return StorageError(f"{message}; refusing to start (the data dir is left untouched)")


class StorageError(Exception):
    """The data dir cannot be used (corruption, foreign files, in use): start-up stops with this line."""



class DiskFaults:
    """Test hook: with ETCDLITE_FAULT_DISK_FULL_AFTER_BYTES=N, writes fail with ENOSPC after N bytes."""

    ENV = "ETCDLITE_FAULT_DISK_FULL_AFTER_BYTES"

    def __init__(self, budget: int) -> None:
        self.remaining = budget

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DiskFaults | None:
        raw = (os.environ if environ is None else environ).get(cls.ENV, "")
        return cls(int(raw)) if raw.strip() else None

    def allow(self, n: int) -> int:
        granted = min(n, self.remaining)
        self.remaining -= granted
        return granted


def _write_all(fd: int, data: bytes, faults: DiskFaults | None) -> None:
    allowed = faults.allow(len(data)) if faults is not None else len(data)
    view = memoryview(data)[:allowed]
    while view:
        view = view[os.write(fd, view):]
    if allowed < len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def listing(directory: Path, suffix: str) -> list[tuple[int, Path]]:
    """Files named ``<hex number><suffix>``, by number."""
    out = []
    for path in directory.iterdir():
        if path.name.endswith(suffix):
            try:
                out.append((int(path.name[:-len(suffix)], 16), path))
            except ValueError:
                continue
    return sorted(out)


def write_snapshot_file(snap_dir: Path, index: int, data: bytes, sync: bool,
                        faults: DiskFaults | None = None) -> Path:
    """Atomically: write a temporary file, fsync it, rename it into place, fsync the directory."""
    final = snap_dir / f"{index:016x}{SNAP_SUFFIX}"
    tmp = snap_dir / f"{final.name}.tmp"
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        _write_all(fd, data, faults)
        if sync:
            os.fsync(fd)
    except OSError:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, final)
    if sync:
        fsync_dir(snap_dir)
    return final


class Segment:
    """The log segment being appended to; used by one thread at a time."""

    def __init__(self, path: Path, fd: int, first_index: int, size: int) -> None:
        self.path = path
        self.first_index = first_index
        self.size = size
        self._fd = fd

    @classmethod
    def create(cls, wal_dir: Path, first_index: int, sync: bool, faults: DiskFaults | None = None) -> Segment:
        path = wal_dir / f"{first_index:016x}{WAL_SUFFIX}"
        fd = open_private(path, os.O_WRONLY | os.O_TRUNC | os.O_APPEND)
        try:
            header = segment_header(first_index)
            _write_all(fd, header, faults)
            if sync:
                os.fdatasync(fd)
                fsync_dir(wal_dir)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, first_index, len(header))

    @classmethod
    def reopen(cls, path: Path, first_index: int, size: int) -> Segment:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(path, fd, first_index, size)

    def append(self, data: bytes, sync: bool, faults: DiskFaults | None) -> None:
        try:
            _write_all(self._fd, data, faults)
        finally:
            self.size = os.fstat(self._fd).st_size
        if sync:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def check_data_dir(member_dir: Path) -> None:
    """Refuse a real etcd's data dir instead of writing next to its files."""
    if (member_dir / SNAP_DIR / "db").exists():
        data_dir = member_dir.parent
        raise refuse(f"{member_dir} holds a real etcd's bbolt database (snap/db): import it into a new data dir "
                     f"with `etcdlite snapshot restore {data_dir} --data-dir NEW_DIR` (etcd must be stopped)")


def lock_data_dir(member_dir: Path) -> int:
    path = member_dir / "lock"
    fd = open_private(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"cannot lock {path}: the data dir is in use by another etcdlite") from None
    return fd


