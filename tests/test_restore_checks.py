"""Snapshot restore checks before it writes, and streams (issue 16 item 6).

Each crafted snapshot below is well sealed (valid pages, checksums and SHA-256 trailer) but describes
a state no etcd could reach, or is damaged inside its seal; the restore refuses it with one line and
exit code 1, and leaves no data dir, no staging dir behind.  A 1 GiB snapshot restores in bounded
memory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from etcdlite.core.restore import restore
from etcdlite.pb.mvccpb import kv_pb2
from etcdlite.storage.backend import KeyValue
from etcdlite.storage.etcd import etcddb
from etcdlite.storage.etcd.bbolt import PAGE_HEADER, PAGE_SIZE
from etcdlite.storage.etcd.etcddb import (
    AuthRecord,
    EtcdState,
    LeaseRecord,
    RoleRecord,
    SnapshotError,
    UserRecord,
    write_db,
)
from etcdlite.storage.memory.files import StorageError

pytestmark = pytest.mark.timeout(300)


def kv(key: str, rev: int, version: int = 1, create: int | None = None, lease: int = 0, value: bytes = b"v",
       sub: int = 0) -> KeyValue:
    return KeyValue(key.encode(), value, rev if create is None else create, rev, version, lease, sub)


RawItems = list[tuple[bytes, bytes]]  # key-bucket entries as they are on disk


def sealed(path: Path, state: EtcdState, versions: list[KeyValue] | RawItems,
           damage: Callable[[bytearray], None] | None = None) -> Path:
    with open(path, "w+b") as f:
        if versions and isinstance(versions[0], tuple):
            with mock.patch.object(etcddb, "_key_items", lambda _: iter((k, v, 0) for k, v in versions)):
                write_db(f, state, [])
        else:
            write_db(f, state, versions)
        f.seek(0)
        data = bytearray(f.read())
    if damage is not None:
        damage(data)
    path.write_bytes(bytes(data) + hashlib.sha256(data).digest())
    return path


def refused(tmp_path: Path, state: EtcdState, versions: list[KeyValue] | RawItems,
            damage: Callable[[bytearray], None] | None = None) -> str:
    src = sealed(tmp_path / "crafted.db", state, versions, damage)
    target = tmp_path / "restored"
    with pytest.raises((SnapshotError, StorageError)) as err:
        restore(src, target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.db"]  # no staging dir left
    message = str(err.value)
    assert "\n" not in message
    return message


IMPOSSIBLE = "the snapshot's content is impossible: "
CASES = {
    "version -1": (EtcdState(revision=2), [kv("k", 2, version=-1)],
                   "key b'k' at revision 2 has version -1"),
    "lease that does not exist": (EtcdState(revision=2), [kv("k", 2, lease=0x99)],
                                  "key b'k' is attached to lease 99, which does not exist"),
    "create revision after the version": (EtcdState(revision=3), [kv("k", 3, version=2, create=5)],
                                          "key b'k' at revision 3 has create revision 5"),
    "version beyond its revisions": (EtcdState(revision=4), [kv("k", 4, version=7, create=3)],
                                     "key b'k' at revision 4 has version 7, more than the revisions since its "
                                     "creation at 3"),
    "deletion holding a value": (
        EtcdState(revision=3), [(etcddb.revision_key(3, 0, True), kv_pb2.KeyValue(key=b"k", value=b"x").SerializeToString())],
        "key bucket: the deletion of key b'k' at revision 3 holds more than the key"),
    "put with version 0": (
        EtcdState(revision=3), [(etcddb.revision_key(3, 0, False),
                                 kv_pb2.KeyValue(key=b"k", mod_revision=3, create_revision=3).SerializeToString())],
        "key bucket: key b'k' at revision 3 is not marked as a deletion but has version 0"),
    "key bucket value that is not a KeyValue": (
        EtcdState(revision=3), [(etcddb.revision_key(3, 0, False), b"\xff\xff")], None),
    "revision key of the wrong size": (EtcdState(revision=3), [(b"\0" * 16, b"")],
                                       "key bucket: 00000000000000000000000000000000 is not a revision key"),
    "finished compaction above the scheduled one": (
        EtcdState(revision=9, compact_revision=8, scheduled_compact_revision=3), [kv("k", 9)],
        "the scheduled compaction (3) is below the finished one (8)"),
    "lease without TTL": (EtcdState(revision=2, leases=[LeaseRecord(0x5, 0)]), [], "lease 5 has TTL 0"),
    "unknown alarm": (EtcdState(alarms=[(0x1, 9)]), [], "member 1 has an alarm of unknown type 9"),
    "user with a role that does not exist": (
        EtcdState(auth=AuthRecord(users=[UserRecord("u", b"$2a$04$x", ["ghost"])])), [],
        "user 'u' has role 'ghost', which does not exist"),
    "auth on without root": (
        EtcdState(auth=AuthRecord(enabled=True, users=[UserRecord("u", b"$2a$04$x", ["r"])],
                                  roles=[RoleRecord("r", [])])), [],
        "auth is enabled without a root user holding the root role"),
    "revision overflowing int64": (EtcdState(), [(etcddb.revision_key(2**63, 0, False), b"")],
                                   "key bucket: revision 9223372036854775808_0 overflows int64"),
}


@pytest.mark.parametrize("case", CASES)
def test_impossible_content_is_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    state, versions, expected = CASES[case]
    message = refused(tmp_path, state, versions)
    if expected is not None:
        assert message in (IMPOSSIBLE + expected, expected)


def test_possible_content_restores(tmp_path: Path) -> None:
    """The checks do not refuse what etcd does: an old version on a lease since revoked, a
    compaction above every kept version (its revisions held only deletions), a learner member."""
    state = EtcdState(revision=1, compact_revision=6, scheduled_compact_revision=6,
                      leases=[LeaseRecord(0x7, 60)])
    versions = [kv("k", 2, lease=0x99), kv("k", 3, version=2, create=2),  # lease 0x99 was revoked
                kv("l", 4, lease=0x7), kv("l", 5, version=2, create=4, lease=0x7, sub=0),
                kv("m", 5, sub=1)]
    src = sealed(tmp_path / "ok.db", state, versions)
    summary = restore(src, tmp_path / "restored")
    assert (summary.revision, summary.compact_revision, summary.versions) == (6, 6, 5)


@pytest.mark.parametrize("where, expected", [
    (lambda d: d.__setitem__(slice(3 * PAGE_SIZE, 3 * PAGE_SIZE + 8), (77).to_bytes(8, "little")),
     "bucket key: page 3: its header says page 77"),
    (lambda d: d.__setitem__(slice(3 * PAGE_SIZE + 8, 3 * PAGE_SIZE + 10), (0x10).to_bytes(2, "little")),
     "bucket key: page 3: invalid type 0x10 where 0x3 was expected"),
    (lambda d: d.__setitem__(slice(3 * PAGE_SIZE + PAGE_HEADER.size + 4, 3 * PAGE_SIZE + PAGE_HEADER.size + 8),
                             (9000).to_bytes(4, "little")),
     "bucket key: page 3: leaf element 0 points outside the page"),
    (lambda d: d.__setitem__(slice(0, 2 * PAGE_SIZE), bytes(2 * PAGE_SIZE)),
     "no valid bbolt meta page (not a bbolt database, or both meta pages damaged)"),
])
def test_damage_under_a_valid_seal_is_refused(tmp_path: Path, where: Callable[[bytearray], None],
                                              expected: str) -> None:
    versions = [kv(f"key{i:04d}", i + 2, value=b"x" * 100) for i in range(200)]  # the key bucket: pages 3...
    assert refused(tmp_path, EtcdState(revision=201), versions, where) == expected


def test_refusal_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    src = sealed(tmp_path / "crafted.db", EtcdState(revision=2), [kv("k", 2, version=-1)])
    p = subprocess.run([sys.executable, "-m", "etcdlite", "snapshot", "restore", str(src), "--data-dir",
                        str(tmp_path / "restored")], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr == f"Error: {IMPOSSIBLE}key b'k' at revision 2 has version -1\n"
    assert not (tmp_path / "restored").exists()


# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak (pytest's) into the latter
_RSS_PROBE = """
import sys
from etcdlite.cli import snapshot_restore
rc = snapshot_restore(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(peak.split()[1]) // 1024, file=sys.stderr)
sys.exit(rc)
"""


def test_a_1_gib_snapshot_restores_in_bounded_memory(tmp_path: Path) -> None:
    """etcdutl takes ~16 MiB here; before it was streamed, etcdlite's restore took 2 GiB."""
    value = os.urandom(1 << 20)
    count = 1024
    versions = (KeyValue(b"big/%05d" % i, value[i:] + value[:i], i + 2, i + 2, 1, 0) for i in range(count))
    src = tmp_path / "big.db"
    with open(src, "w+b") as f:
        size = write_db(f, EtcdState(revision=count + 1), versions)
        digest = hashlib.sha256()
        f.seek(0)
        while chunk := f.read(1 << 22):
            digest.update(chunk)
        f.write(digest.digest())
    assert size >= 1 << 30
    try:
        p = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(src), "--data-dir", str(tmp_path / "restored")],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        peak_mib = int(p.stderr.split()[-1])
        assert peak_mib < 150, f"restoring a {size >> 20} MiB snapshot took {peak_mib} MiB"
        assert f"(revision {count + 1}, {count} key versions, 0 leases)" in p.stdout
        snap = next((tmp_path / "restored/member/snap").iterdir())
        assert snap.stat().st_size > count << 20
    finally:
        src.unlink()
