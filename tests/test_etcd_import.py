"""Importing a stopped etcd's data dir (``etcdlite snapshot restore ETCD_DATA_DIR``, issue 12 item 3).

etcd commits its bbolt database every 100 ms and re-applies the WAL after it on restart; the import
does the same.  ``--backend-batch-interval=1h`` keeps etcd from committing its database at all after
start-up (until a compaction forces one), so after ``kill -9`` the writes live in its WAL alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_snapshot_bbolt import FAST, etcdlite_restore, observe, served, workload

from harness import ETCD_BIN, EtcdProcess, etcdctl

pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")]

NO_COMMITS = ["--backend-batch-interval", "1h", "--backend-batch-limit", "1000000", "--snapshot-count", "1000000"]


def test_a_cleanly_stopped_etcd_imports_whole(server_factory: Callable[..., EtcdProcess], tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST)
    compacted = workload(etcd.client())
    before = observe(etcd.client(), compacted)
    etcd.stop()
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert p.returncode == 0 and p.stdout.startswith(f"restored etcd data dir {etcd.data_dir} into "), p.stderr
    assert served("etcdlite", tmp_path / "imported", compacted, server_factory) == before


def test_writes_only_in_the_wal_after_kill_9_are_applied(server_factory: Callable[..., EtcdProcess],
                                                          tmp_path: Path) -> None:
    # the oracle runs the same operations and is asked (HashKV would make the other commit its database)
    oracle = server_factory("etcd", args=FAST)
    compacted = workload(oracle.client())
    before = observe(oracle.client(), compacted)
    oracle.stop()
    etcd = server_factory("etcd", args=FAST + NO_COMMITS)
    assert workload(etcd.client()) == compacted  # KV, leases, a compaction, users, roles, permissions
    etcd.kill()
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert p.returncode == 0, p.stderr
    assert "note: applied " in p.stderr and "note: applied 0 " not in p.stderr, p.stderr
    assert served("etcdlite", tmp_path / "imported", compacted, server_factory) == before


def test_auth_changes_only_in_the_wal_are_applied(server_factory: Callable[..., EtcdProcess],
                                                  tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST + NO_COMMITS)
    for args in (("user", "add", "root:first"), ("role", "add", "root"), ("user", "grant-role", "root", "root"),
                 ("auth", "enable")):  # enabling auth commits etcd's database: what follows is in its WAL only
        assert etcdctl(etcd.endpoint, *args)[0] == 0, args
    for args in (("user", "passwd", "root", "--interactive=false"), ("user", "add", "bob:bpw"),
                 ("role", "add", "reader"), ("role", "grant-permission", "reader", "read", "secret"),
                 ("user", "grant-role", "bob", "reader"), ("put", "secret", "s3")):
        user = "root:first" if args[1] == "passwd" else "root:second"
        rc, _, err = etcdctl(etcd.endpoint, "--user", user, *args, input="second\n" if args[1] == "passwd" else None)
        assert rc == 0, (args, err)
    etcd.kill()
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert p.returncode == 0 and "2 users, 2 roles" in p.stdout, p.stderr
    assert "note: applied " in p.stderr and "note: applied 0 " not in p.stderr, p.stderr
    lite = server_factory("etcdlite", args=FAST, data_dir=tmp_path / "imported")
    rc, _, err = etcdctl(lite.endpoint, "get", "secret")
    assert rc != 0 and "user name is empty" in err
    assert etcdctl(lite.endpoint, "--user", "root:first", "get", "secret")[0] != 0
    assert etcdctl(lite.endpoint, "--user", "root:second", "get", "secret", "--print-value-only")[1] == "s3\n"
    assert etcdctl(lite.endpoint, "--user", "bob:bpw", "get", "secret", "--print-value-only")[1] == "s3\n"
    rc, _, err = etcdctl(lite.endpoint, "--user", "bob:bpw", "put", "secret", "mine")
    assert rc != 0 and "permission denied" in err


def test_wal_entries_the_import_cannot_apply_refuse_it(server_factory: Callable[..., EtcdProcess],
                                                       tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST + NO_COMMITS + ["--enable-v2"])
    assert etcdctl(etcd.endpoint, "put", "k", "v")[0] == 0
    put = subprocess.run(["curl", "-fsS", "-X", "PUT", f"{etcd.endpoint}/v2/keys/v2key", "-d", "value=x"],
                         capture_output=True, text=True)
    assert put.returncode == 0, put.stderr
    etcd.kill()
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("Error: etcd's WAL entry ") and "is a v2 API write to '/1/v2key', which the " \
        "import does not apply; start etcd once and stop it cleanly" in p.stderr
    assert not (tmp_path / "imported").exists()


def test_a_running_etcd_or_a_damaged_wal_is_refused(server_factory: Callable[..., EtcdProcess],
                                                    tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST + NO_COMMITS)
    for i in range(5):
        assert etcdctl(etcd.endpoint, "put", f"k{i}", "v" * 600)[0] == 0
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert (p.returncode, p.stderr) == (1, f"Error: the etcd data dir {etcd.data_dir} is in use: stop etcd first\n")
    etcd.kill()
    wal = next((etcd.data_dir / "member" / "wal").glob("*.wal"))
    data = bytearray(wal.read_bytes())
    at = data.index(b"v" * 600)  # the first put's value, with more records after it
    data[at] ^= 1
    wal.write_bytes(bytes(data))
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert (p.returncode, p.stderr) == (1, f"Error: etcd's WAL file {wal.name} has a record whose CRC does not "
                                           f"match\n")
    assert not (tmp_path / "imported").exists()


def test_etcdlite_started_on_an_etcd_data_dir_says_how_to_import_it(server_factory: Callable[..., EtcdProcess],
                                                                    tmp_path: Path) -> None:
    from harness import ServerStartError

    etcd = server_factory("etcd")
    etcd.stop()
    lite = EtcdProcess("etcdlite", etcd.data_dir)
    with pytest.raises(ServerStartError) as err:
        lite.start()
    lite.stop()
    log = str(err.value)
    assert f"import it into a new data dir with `etcdlite snapshot restore {etcd.data_dir} --data-dir NEW_DIR`" in log
