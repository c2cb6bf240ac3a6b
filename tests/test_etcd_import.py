"""Importing a stopped etcd's data dir (``etcdlite snapshot restore ETCD_DATA_DIR``, issue 12 item 3).

etcd commits its bbolt database every 100 ms and re-applies the WAL after it on restart; the import
does the same.  ``--backend-batch-interval=1h`` keeps etcd from committing its database at all after
start-up (until a compaction forces one), so after ``kill -9`` the writes live in its WAL alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness import ETCD_BIN, EtcdProcess, etcdctl
from test_snapshot_bbolt import FAST, etcdlite_restore, observe, served, workload

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
    compacted = workload(oracle.client(), auth=False)
    before = observe(oracle.client(), compacted)
    oracle.stop()
    etcd = server_factory("etcd", args=FAST + NO_COMMITS)
    assert workload(etcd.client(), auth=False) == compacted
    etcd.kill()
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert p.returncode == 0, p.stderr
    assert "note: applied " in p.stderr and "note: applied 0 " not in p.stderr, p.stderr
    assert served("etcdlite", tmp_path / "imported", compacted, server_factory) == before


def test_wal_entries_the_import_cannot_apply_refuse_it(server_factory: Callable[..., EtcdProcess],
                                                       tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST + NO_COMMITS)
    assert etcdctl(etcd.endpoint, "put", "k", "v")[0] == 0
    assert etcdctl(etcd.endpoint, "user", "add", "alice:pw")[0] == 0
    etcd.kill()
    p = etcdlite_restore(etcd.data_dir, tmp_path / "imported")
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("Error: etcd's WAL entry ") and "is an auth change (UserAdd), which the import " \
        "does not apply; start etcd once and stop it cleanly" in p.stderr
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
