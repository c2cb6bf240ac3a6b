"""tests/e2e/cluster_wrapper.py, the ``etcd`` of ``make e2e-cluster``: which command lines are members of a
multi-member cluster, and which database each member gets (one per cluster started, the same one again when
a member restarts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).with_name("e2e")))
from cluster_wrapper import GENERATIONS, backend_url, cluster_key, member_flags  # noqa: E402

psycopg = pytest.importorskip("psycopg")

THREE = "infra0=http://localhost:20001,infra1=http://localhost:20006,infra2=http://localhost:20011"


def test_the_member_flags_are_read_as_etcds_flag_parser_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETCD_INITIAL_CLUSTER_TOKEN", raising=False)
    args = ["--name", "infra1", "--listen-client-urls", "http://localhost:20005", "--client-cert-auth",
            "-data-dir=/tmp/d1", "--initial-cluster", THREE, "--initial-cluster-token=new", "--name", "infra1"]
    flags = member_flags(args)
    assert flags is not None
    assert (flags["name"], flags["data-dir"], flags["initial-cluster-token"]) == ("infra1", "/tmp/d1", "new")
    assert cluster_key(flags) == f"{THREE}|new"
    shuffled = member_flags(["--initial-cluster", ",".join(reversed(THREE.split(","))), "--initial-cluster-token",
                             "new"])
    assert shuffled is not None and cluster_key(shuffled) == cluster_key(flags)
    defaults = member_flags(["--initial-cluster", THREE])
    assert defaults is not None
    assert (defaults["name"], defaults["data-dir"], defaults["initial-cluster-token"]) == \
        ("default", "default.etcd", "etcd-cluster")
    monkeypatch.setenv("ETCD_INITIAL_CLUSTER_TOKEN", "from-env")
    from_env = member_flags(["--initial-cluster", THREE])
    assert from_env is not None and from_env["initial-cluster-token"] == "from-env"


@pytest.mark.parametrize("args", [
    ["--name", "infra0", "--initial-cluster", "infra0=http://localhost:20001"],
    ["--name", "e1", "--initial-cluster", "e1=unix://a:1,e1=unix://a:2"],  # one member, two peer URLs
    ["--name", "x"],
])
def test_a_one_member_cluster_is_left_alone(args: list[str]) -> None:
    flags = member_flags(args)
    assert flags is not None and cluster_key(flags) is None


def test_subcommands_are_left_alone() -> None:
    assert member_flags(["gateway", "--endpoints", "localhost:2379"]) is None
    assert member_flags(["grpc-proxy", "start"]) is None


def test_each_cluster_started_gets_a_database_and_a_restarted_member_its_own_again(pg_cluster: Any,
                                                                                  tmp_path: Path) -> None:
    server = pg_cluster.url("").rstrip("/")
    pg_cluster.psql(GENERATIONS)
    pg_cluster.psql("TRUNCATE etcdlite_e2e_cluster")

    def start(name: str, run: str, state: str = "new") -> str:
        flags = member_flags(["--name", name, "--data-dir", str(tmp_path / run / name), "--initial-cluster", THREE,
                              "--initial-cluster-token", "new", "--initial-cluster-state", state])
        assert flags is not None
        key = cluster_key(flags)
        assert key is not None
        return backend_url(server, flags, key)

    first = {start(f"infra{n}", "run1") for n in range(3)}
    assert len(first) == 1  # the three members of one cluster share its database
    second = {start(f"infra{n}", "run2") for n in range(3)}  # the same cluster again, fresh data dirs
    assert len(second) == 1 and second != first
    assert start("infra1", "run1") == first.pop()  # a restart: its data dir names its database
    joined = start("infra3", "run3", state="existing")  # added to the running cluster
    assert joined == second.pop()
    databases = pg_cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE 'etcdlite_e2e_%'").split()
    assert len(databases) == 2
    with psycopg.connect(joined, autocommit=True) as conn:  # it exists, empty, for etcdlite to fill
        assert conn.execute("SELECT 1").fetchone() == (1,)
    for name in databases:
        pg_cluster.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
