"""The data dir belongs to its owner alone: created 0700, checked before anything in it is read.

etcd creates its data dir 0700 and its files 0600 whatever the umask and warns about a looser
existing directory (fileutil.CheckDirPermission); so does etcdlite, with etcd's words. etcdlite
goes further where a looser mode is dangerous: if another user can write a directory or a file
etcdlite reads its state from (``member/auth.json`` says whether auth is on), that user could have
replaced it, so start-up stops with one line telling the operator what to check, instead of
trusting the file. The same holds for a file or directory owned by another user (other than root).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .fsutil import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, make_private_dir
from .memory.files import MEMBER_DIR, SNAP_DIR, WAL_DIR, StorageError

log = logging.getLogger("etcdlite")

_GO_TYPE_LETTERS = ((stat.S_ISDIR, "d"), (stat.S_ISLNK, "L"), (stat.S_ISFIFO, "p"), (stat.S_ISSOCK, "S"))


def go_file_mode(mode: int) -> str:
    """Go's os.FileMode.String() (``drwxr-xr-x``, ``-rw-------``), as etcd prints modes."""
    out = "".join(letter for test, letter in _GO_TYPE_LETTERS if test(mode))
    out += "u" if mode & stat.S_ISUID else ""
    out += "g" if mode & stat.S_ISGID else ""
    out += "t" if mode & stat.S_ISVTX else ""
    rwx = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return (out or "-") + rwx


def _warn_if_loose(path: Path, st: os.stat_result) -> None:
    """etcd's "check file permission" warning (fileutil.TouchDirAll), also for files."""
    is_dir = stat.S_ISDIR(st.st_mode)
    if not st.st_mode & 0o077:
        return
    kind, wanted = ("directory", PRIVATE_DIR_MODE) if is_dir else ("file", PRIVATE_FILE_MODE)
    log.warning("check file permission", extra={"fields": {"error": (
        f'{kind} "{path}" exist, but the permission is "{go_file_mode(st.st_mode)}". The recommended '
        f'permission is "{go_file_mode(wanted)}" to prevent possible unprivileged access to the data')}})


def _refuse_if_foreign(data_dir: Path, path: Path, mode: int, uid: int) -> None:
    """Stop if someone other than this user (or root) can have written ``path``."""
    shown = "the data dir" if path == data_dir else str(path.relative_to(data_dir))
    if mode & 0o022:
        fix = f"chmod -R go-w {data_dir}"
        raise StorageError(
            f'data dir "{data_dir}": {shown} is writable by group or others ({go_file_mode(mode)}), so '
            f"another user could have replaced what etcdlite reads from it; refusing to start (check the data "
            f"dir, then `{fix}`)")
    if uid not in (os.geteuid(), 0):
        raise StorageError(
            f'data dir "{data_dir}": {shown} belongs to user {uid}, not to this user ({os.geteuid()}), '
            f"so etcdlite will not trust it; refusing to start (check it, then chown it)")


def secure_data_dir(data_dir: Path) -> None:
    """Create the data dir 0700 if missing, then check it, ``member/`` and the files etcdlite keeps
    there (before any of them is read): warn about loose modes, refuse ones others can write."""
    try:
        if not data_dir.exists():
            make_private_dir(data_dir)
        dirs = [data_dir, data_dir / MEMBER_DIR, data_dir / MEMBER_DIR / SNAP_DIR, data_dir / MEMBER_DIR / WAL_DIR]
        for d in dirs:
            if not d.exists():
                continue
            st = d.stat()
            _refuse_if_foreign(data_dir, d, st.st_mode, st.st_uid)
            _warn_if_loose(d, st)
            if d == data_dir:
                continue  # what else lives there (a log, a backup) is not etcdlite's
            for entry in sorted(d.iterdir()):
                est = entry.lstat()
                owner = est.st_uid  # of a symbolic link: who made it; its mode: what it points to
                if stat.S_ISLNK(est.st_mode):
                    est = entry.stat()
                if stat.S_ISDIR(est.st_mode):
                    continue  # snap/ and wal/ are checked as dirs above
                _refuse_if_foreign(data_dir, entry, est.st_mode, owner)
                _warn_if_loose(entry, est)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        where = f"{exc.filename}: " if exc.filename else ""
        raise StorageError(f'cannot use data dir "{data_dir}": {where}{reason}') from None
