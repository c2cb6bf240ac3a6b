"""``etcdlite snapshot restore SOURCE --backend postgres://...``: etcd (or an embedded etcdlite) into PostgreSQL.

* real etcd 3.5.1's snapshot (keys with several versions, deletes, a compaction, leases with keys, users,
  roles, auth enabled) restored into a database: two instances over it answer what etcd answered (Range
  at the head and at old revisions, HashKV, leases and their keys, users and roles), and what an embedded
  etcdlite restored from the same file answers; auth works with the same users; the next put gets the
  next revision;
* leases restart their TTLs when the cluster starts, not when the restore ran, and still expire;
* refusals change nothing: a database that holds a cluster or that an instance serves, a damaged
  snapshot, a bad or unreachable URL; a write that fails half-way leaves the database as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_snapshot_bbolt import FAST, etcdlite_restore, needs_etcd, observe, save, workload

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import Client, EtcdProcess, Stubs, etcdctl, free_port

pytest.importorskip("psycopg")

pytestmark = pytest.mark.timeout(300)


def restore_into(source: Path, url: str, *extra: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    args = ["--backend", url] if url else []
    return subprocess.run([sys.executable, "-m", "etcdlite", "snapshot", "restore", str(source), *args, *extra],
                          capture_output=True, text=True, env=env)


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Callable[[str, int], list[EtcdProcess]]]:
    started: list[EtcdProcess] = []

    def start(url: str, count: int = 2) -> list[EtcdProcess]:
        procs = [EtcdProcess("etcdlite", tmp_path / f"pg-{len(started) + n}", name=f"n{len(started) + n}", args=[
            "--backend", url, "--initial-advertise-peer-urls", f"http://127.0.0.1:{free_port()}", *FAST])
            for n in range(count)]
        started.extend(procs)
        for proc in procs:
            proc.start(wait=False)
        for proc in procs:
            proc.wait_ready(60)
        return procs
    yield start
    for proc in started:
        proc.stop()


class _Token(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or []), ("token", self.token)]
        return continuation(details._replace(metadata=metadata), request)


def as_user(proc: EtcdProcess, user: str, password: str) -> Client:
    token = proc.stubs().auth.Authenticate(pb.AuthenticateRequest(name=user, password=password), timeout=10).token
    return Client(Stubs.for_channel(grpc.intercept_channel(proc.channel(), _Token(token))), name=proc.target)


def enable_auth(endpoint: str) -> None:
    for args in (("user", "add", "root:rootpw"), ("user", "grant-role", "root", "root"), ("auth", "enable")):
        rc, _, err = etcdctl(endpoint, *args)
        assert rc == 0, (args, err)


def tables(pg_cluster: Any, url: str) -> str:
    """What the database holds, as far as a restore may change it."""
    db = url.rsplit("/", 1)[1]
    if pg_cluster.psql("SELECT to_regclass('etcdlite_schema') IS NOT NULL", db) != "t":
        return "no schema"
    return pg_cluster.psql(
        "SELECT (SELECT count(*) FROM etcdlite_log), (SELECT coalesce(max(idx), 0) FROM etcdlite_log), "
        "(SELECT string_agg(idx || ':' || revision || ':' || size, ',') FROM etcdlite_snapshot), "
        "(SELECT count(*) FROM etcdlite_snapshot_chunk), (SELECT string_agg(name, ',') FROM etcdlite_state), "
        "(SELECT count(*) FROM etcdlite_lease)", db)


# -- real etcd into PostgreSQL ----------------------------------------------------------------------------------

@needs_etcd
def test_real_etcds_snapshot_restores_into_postgres(server_factory: Callable[..., EtcdProcess], pg_cluster: Any,
                                                    instances: Callable[[str, int], list[EtcdProcess]],
                                                    tmp_path: Path) -> None:
    etcd = server_factory("etcd", args=FAST)
    compacted = workload(etcd.client())
    enable_auth(etcd.endpoint)
    before = observe(as_user(etcd, "root", "rootpw"), compacted)
    snap = tmp_path / "etcd.db"
    rc, _, err = etcdctl(etcd.endpoint, "--user", "root:rootpw", "snapshot", "save", str(snap))
    assert rc == 0, err
    etcd.stop()

    url = pg_cluster.new_database()
    p = restore_into(snap, url)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"restored snapshot {snap} into {url} (revision {before['kvs']['header']['revision']}")
    assert f"compact revision {compacted}" in p.stdout and "3 users, 2 roles" in p.stdout
    assert etcdlite_restore(snap, tmp_path / "embedded").returncode == 0

    a, b = instances(url, 2)
    for proc in (a, b):
        assert observe(as_user(proc, "root", "rootpw"), compacted) == before, proc
    embedded = server_factory("etcdlite", args=FAST, data_dir=tmp_path / "embedded")
    assert observe(as_user(embedded, "root", "rootpw"), compacted) == before

    # the TTLs restarted at the instances' start (60 s and 90 s leases, not run down meanwhile)
    ttl = as_user(a, "root", "rootpw").ttl(0x1001, keys=True)
    assert 55 <= ttl["TTL"].ttl <= 60 and ttl["keys"] == [b"c"], ttl
    # auth: the same users, their passwords and permissions
    rc, _, err = etcdctl(b.endpoint, "get", "a")
    assert rc != 0 and "user name is empty" in err
    assert etcdctl(b.endpoint, "--user", "alice:apw", "get", "a", "--print-value-only")[:2] == (0, "3\n")
    assert etcdctl(b.endpoint, "--user", "alice:wrong", "get", "a")[0] != 0
    rc, _, err = etcdctl(b.endpoint, "--user", "alice:apw", "put", "a", "4")
    assert rc != 0 and "permission denied" in err
    # the next write gets the next revision, on both instances
    head = before["kvs"]["header"]["revision"]
    put = as_user(a, "root", "rootpw").put("after", "restore")
    assert put["header"]["revision"] == head + 1
    got = as_user(b, "root", "rootpw").range("after")
    assert got["kvs"][0]["mod_revision"] == head + 1 and got["header"]["revision"] == head + 1


@needs_etcd
def test_a_killed_etcds_data_dir_imports_into_postgres(server_factory: Callable[..., EtcdProcess], pg_cluster: Any,
                                                        instances: Callable[[str, int], list[EtcdProcess]]) -> None:
    """The writes only in etcd's WAL (its database never committed after start-up) are applied too."""
    from test_etcd_import import NO_COMMITS

    oracle = server_factory("etcd", args=FAST)
    compacted = workload(oracle.client(), auth=False)
    before = observe(oracle.client(), compacted)
    oracle.stop()
    etcd = server_factory("etcd", args=FAST + NO_COMMITS)
    assert workload(etcd.client(), auth=False) == compacted
    etcd.kill()
    url = pg_cluster.new_database()
    p = restore_into(etcd.data_dir, url)
    assert p.returncode == 0 and p.stdout.startswith(f"restored etcd data dir {etcd.data_dir} into {url} "), p.stderr
    assert "note: applied " in p.stderr and "note: applied 0 " not in p.stderr, p.stderr
    (proc,) = instances(url, 1)
    assert observe(proc.client(), compacted) == before


# -- an embedded etcdlite into PostgreSQL; leases --------------------------------------------------------------

def test_embedded_etcdlites_snapshot_restores_into_postgres_and_leases_start_with_the_cluster(
        server_factory: Callable[..., EtcdProcess], pg_cluster: Any,
        instances: Callable[[str, int], list[EtcdProcess]], tmp_path: Path) -> None:
    lite = server_factory("etcdlite", args=FAST)
    c = lite.client()
    compacted = workload(c, auth=False)
    c.grant(8, id=0x2001)
    c.put("short", "lived", lease=0x2001)
    before = observe(c, compacted)
    save(lite, tmp_path / "lite.db")
    lite.stop()
    url = pg_cluster.new_database()
    p = restore_into(tmp_path / "lite.db", url)
    assert p.returncode == 0, p.stderr
    time.sleep(9)  # longer than the short lease's TTL: it must not run from the restore on
    (a,) = instances(url, 1)
    got = observe(a.client(), compacted)
    short = got["ttl"].pop(0x2001)
    before["ttl"].pop(0x2001)
    assert got == before
    assert short["keys"] == [b"short"]
    deadline = time.monotonic() + 10
    while a.client().get("short") and time.monotonic() < deadline:  # and it expires, with its key
        time.sleep(0.2)
    assert a.client().get("short") == []
    assert a.client().ttl(0x2001)["TTL"] == -1  # not found
    assert a.client().ttl(0x1001)["TTL"].ttl > 40  # the others run on


def test_alarms_are_restored_into_postgres(server_factory: Callable[..., EtcdProcess], pg_cluster: Any,
                                           instances: Callable[[str, int], list[EtcdProcess]], tmp_path: Path) -> None:
    lite = server_factory("etcdlite")
    member = lite.stubs().maintenance.Status(pb.StatusRequest(), timeout=10).header.member_id
    lite.client().call("Maintenance.Alarm", pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=member,
                                                            alarm=pb.NOSPACE))
    save(lite, tmp_path / "alarmed.db")
    lite.stop()
    url = pg_cluster.new_database()
    assert restore_into(tmp_path / "alarmed.db", url).returncode == 0
    for proc in instances(url, 2):
        alarms = proc.client().call("Maintenance.Alarm", pb.AlarmRequest(action=pb.AlarmRequest.GET))["alarms"]
        assert alarms == [{"memberID": member, "alarm": "NOSPACE"}]
        rc, _, err = etcdctl(proc.endpoint, "put", "k", "v")
        assert rc != 0 and "database space exceeded" in err


# -- refusals ------------------------------------------------------------------------------------------------

@pytest.fixture
def snapshot(server_factory: Callable[..., EtcdProcess], tmp_path: Path) -> Path:
    lite = server_factory("etcdlite", args=FAST)
    workload(lite.client(), auth=False)
    save(lite, tmp_path / "snap.db")
    lite.stop()
    return tmp_path / "snap.db"


def _refused(p: subprocess.CompletedProcess[str], words: str) -> None:
    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.startswith("Error: ") and p.stderr.count("\n") == 1 and words in p.stderr, p.stderr


def test_a_database_that_holds_a_cluster_or_is_served_is_refused_unchanged(
        snapshot: Path, pg_cluster: Any, instances: Callable[[str, int], list[EtcdProcess]]) -> None:
    url = pg_cluster.new_database()
    assert restore_into(snapshot, url).returncode == 0
    held = tables(pg_cluster, url)
    _refused(restore_into(snapshot, url), "already holds an etcdlite cluster (etcdlite_snapshot is not empty)")
    assert tables(pg_cluster, url) == held

    served = pg_cluster.new_database()  # an instance serves it, though nothing was written yet
    (proc,) = instances(served, 1)
    _refused(restore_into(snapshot, served), "1 etcdlite instance(s) serve the database")
    proc.stop()  # a clean stop leaves the member list: the empty database can take the restore now
    assert restore_into(snapshot, served).returncode == 0

    written = pg_cluster.new_database()
    (proc,) = instances(written, 1)
    assert proc.client().put("k", "v")["header"]["revision"] == 2
    proc.stop()
    held = tables(pg_cluster, written)
    _refused(restore_into(snapshot, written), "already holds an etcdlite cluster (etcdlite_log is not empty)")
    assert tables(pg_cluster, written) == held


def test_a_damaged_snapshot_and_bad_urls_are_refused_and_nothing_is_written(
        snapshot: Path, pg_cluster: Any, tmp_path: Path) -> None:
    url = pg_cluster.new_database()
    damaged = tmp_path / "damaged.db"
    data = bytearray(snapshot.read_bytes())
    data[5000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    _refused(restore_into(damaged, url), "expected sha256")
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(snapshot.read_bytes()[:4 * 4096])  # the meta pages, not the pages they point to
    _refused(restore_into(truncated, url, "--skip-hash-check"), "more than the file")
    assert tables(pg_cluster, url) == "no schema"

    _refused(restore_into(snapshot, "mysql://root@127.0.0.1/db"), 'invalid value "mysql://root@127.0.0.1/db" '
             "for flag -backend: expected postgres://user@host:port/db")
    unreachable = f"postgres://postgres:secret@127.0.0.1:{free_port()}/db"
    p = restore_into(snapshot, unreachable)
    _refused(p, f"cannot reach the database postgres://postgres:***@{unreachable.split('@')[1]}")
    assert "secret" not in p.stderr
    _refused(restore_into(snapshot, url, "--data-dir", str(tmp_path / "d")), "give --data-dir or --backend, not both")
    assert tables(pg_cluster, url) == "no schema"

    # the environment, as the server reads it (no --data-dir given)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDLITE_"))}
    p = restore_into(snapshot, "", env={**env, "ETCDLITE_BACKEND": url})
    assert p.returncode == 0 and f"into {url} " in p.stdout, p.stderr


def test_a_write_that_fails_half_way_leaves_the_database_as_it_was(snapshot: Path, pg_cluster: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from etcdlite.core import restore_postgres
    from etcdlite.storage.postgres import restore as pg_restore

    url = pg_cluster.new_database()
    real = pg_restore._write_snapshot

    def fail_after_the_chunks(conn: Any, state: Any) -> None:
        real(conn, state)
        raise pg_restore.StorageError("injected failure")

    monkeypatch.setattr(pg_restore, "_write_snapshot", fail_after_the_chunks)
    with pytest.raises(pg_restore.StorageError, match="injected failure"):
        restore_postgres.restore_into_database(snapshot, url)
    assert tables(pg_cluster, url) == "no schema"  # the schema's creation was rolled back with the rest
    monkeypatch.setattr(pg_restore, "_write_snapshot", real)
    restore_postgres.restore_into_database(snapshot, url)
    assert tables(pg_cluster, url).startswith("0|0|")
