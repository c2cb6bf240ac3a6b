"""Issue 16.1: the data dir belongs to its owner alone, whatever the umask (as etcd's 0700/0600),
a looser existing dir is warned about in etcd's words, and one others can write is refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as pb_grpc
from harness import EtcdProcess


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask the server process inherits at its fork (the test's own is restored at once)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(data_dir: Path) -> dict[str, str]:
    """Every directory and file under the data dir (itself included) with its permission bits."""
    out = {".": oct(stat.S_IMODE(data_dir.stat().st_mode))}
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = Path(root, name)
            out[str(path.relative_to(data_dir))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return out


def touch_every_file(srv: EtcdProcess) -> None:
    """Make the server write every kind of file it keeps: log, snapshot, members, alarms, auth."""
    s = srv.stubs()
    s.kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
    s.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE), timeout=10)
    s.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, alarm=pb.NOSPACE), timeout=10)
    s.maintenance.Defragment(pb.DefragmentRequest(), timeout=10)
    s.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=10)
    s.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    # a learner, so that a real etcd keeps its quorum
    s.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["http://127.0.0.1:1"], isLearner=True), timeout=10)


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=["umask000", "umask022"])
def test_every_dir_0700_every_file_0600_whatever_the_umask(target: str, mask: int,
                                                           server_factory: Callable[..., EtcdProcess],
                                                           tmp_path: Path) -> None:
    data = tmp_path / "data.etcd"
    with umask(mask):
        srv = server_factory(target, data_dir=data, wait=False)
    srv.wait_ready()
    touch_every_file(srv)
    assert srv.stop() in (0, -15)  # etcd dies of SIGTERM
    found = modes(data)
    wrong = {p: m for p, m in found.items()
             if m != ("0o700" if (data / p).is_dir() else "0o600") and not p.endswith(".log")}
    assert not wrong, f"{target} under umask {mask:03o}: {found}"
    assert "member/wal" in found


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=["umask000", "umask022"])
def test_snapshot_restore_makes_a_private_data_dir(mask: int, server_factory: Callable[..., EtcdProcess],
                                                   tmp_path: Path) -> None:
    srv = server_factory("etcdlite")
    s = srv.stubs()
    s.kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
    s.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE), timeout=10)  # alarms too
    backup = tmp_path / "backup.db"
    rc, out, err = srv.etcdctl("snapshot", "save", str(backup))
    assert rc == 0, err
    restored = tmp_path / "new" / "restored.etcd"
    # The umask is set around the call, not in a preexec_fn: a fork that runs Python in the child lets
    # grpcio's at-fork handler start a poller thread there, which then aborts when the fds are closed.
    with umask(mask):
        p = subprocess.run([sys.executable, "-m", "etcdlite", "snapshot", "restore", str(backup), "--data-dir",
                            str(restored)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    found = modes(restored)
    assert {"member/auth.json", "member/alarms", "member/wal", "member/snap"} <= found.keys(), found
    assert {m for p, m in found.items() if (restored / p).is_dir()} == {"0o700"}, found
    assert {m for p, m in found.items() if not (restored / p).is_dir()} == {"0o600"}, found


def test_warns_about_a_looser_existing_dir_as_etcd(target: str, server_factory: Callable[..., EtcdProcess],
                                                  tmp_path: Path) -> None:
    data = tmp_path / "loose.etcd"
    data.mkdir()
    data.chmod(0o755)
    srv = server_factory(target, data_dir=data)
    srv.stubs().kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
    text = (f'directory \\"{data}\\" exist, but the permission is \\"drwxr-xr-x\\". The recommended permission '
            f'is \\"-rwx------\\" to prevent possible unprivileged access to the data')
    assert '"msg":"check file permission"' in srv.log().replace('": "', '":"') and text in srv.log(), srv.log()
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # warned about, not changed (as etcd)


def _start_refused(srv: EtcdProcess) -> str:
    """Start ``srv`` expecting it to refuse: its exit code must be 1 and its stderr one line."""
    try:
        p = subprocess.run(srv.command(), capture_output=True, text=True, timeout=20,
                           env={**os.environ, "GRPC_VERBOSITY": "NONE"})
    except subprocess.TimeoutExpired:
        pytest.fail("the server started on the data dir instead of refusing it")
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.startswith("etcdlite: ")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


@pytest.mark.parametrize("where", [".", "member", "member/wal", "member/snap"])
def test_refuses_a_data_dir_others_can_write(where: str, server_factory: Callable[..., EtcdProcess],
                                             tmp_path: Path) -> None:
    srv = server_factory("etcdlite")
    srv.stubs().kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
    srv.stop()
    (srv.data_dir / where).chmod(0o777)
    line = _start_refused(srv)
    assert "is writable by group or others (drwxrwxrwx)" in line and "refusing to start" in line, line
    assert "chmod -R go-w" in line


def _enable_auth_with_secret(srv: EtcdProcess) -> None:
    s = srv.stubs()
    s.kv.Put(pb.PutRequest(key=b"secret", value=b"the value"), timeout=10)
    s.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"), timeout=10)
    s.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    s.auth.AuthEnable(pb.AuthEnableRequest(), timeout=10)


def _auth_off_copy(auth_json: Path) -> bytes:
    state = json.loads(auth_json.read_bytes())
    state["enabled"] = False
    return json.dumps(state).encode()


@pytest.mark.parametrize("attack", ["world-writable-file", "other-users-file", "world-writable-dir"])
def test_another_users_auth_json_is_not_trusted(attack: str, server_factory: Callable[..., EtcdProcess]) -> None:
    """The attack of issue 16: another local user replaces member/auth.json with a copy saying auth is
    off; after a restart an unauthenticated client must not read the secret."""
    srv = server_factory("etcdlite")
    _enable_auth_with_secret(srv)
    srv.stop()
    auth_json = srv.data_dir / "member" / "auth.json"
    forged = _auth_off_copy(auth_json)
    if attack == "world-writable-dir":  # e.g. made by an old etcdlite under umask 000
        (srv.data_dir / "member").chmod(0o777)
    auth_json.unlink()
    auth_json.write_bytes(forged)
    auth_json.chmod(0o666 if attack == "world-writable-file" else 0o600)
    if attack == "other-users-file":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another user")
        os.chown(auth_json, 65534, 65534)
    line = _start_refused(srv)
    assert "refusing to start" in line, line
    assert ("belongs to user 65534" if attack == "other-users-file" else "writable by group or others") in line
    # and the server never served the secret: nothing listens
    channel = grpc.insecure_channel(srv.address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"secret"), timeout=1)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
