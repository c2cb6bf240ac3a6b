"""Instances over PostgreSQL started as the members of one etcd cluster: each with its own ``--name`` and peer
URL and all with the same ``--initial-cluster`` and token, as etcd's own e2e framework starts a cluster.

They must be what a three-member etcd is to its clients: every member listed from the moment it serves, etcd's
cluster ID (the same on each), and MoveLeader handing leadership (here: the lease reaper) from the leader to
another member -- refused by a follower, as etcd refuses it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from etcdlite.config import Config
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCD_BIN, EtcdProcess, free_port

psycopg = pytest.importorskip("psycopg")

TOKEN = "e2e-like"


def _initial_cluster(peers: dict[str, str]) -> str:
    return ",".join(f"{name}={url}" for name, url in peers.items())


@pytest.fixture
def members(pg_cluster: Any, tmp_path: Path) -> Iterator[list[EtcdProcess]]:
    url = pg_cluster.new_database()
    peers = {f"m{n}": f"http://127.0.0.1:{free_port()}" for n in range(3)}
    procs = [EtcdProcess("etcdlite", tmp_path / name, name=name, args=[
        "--backend", url, "--initial-advertise-peer-urls", peer, "--initial-cluster", _initial_cluster(peers),
        "--initial-cluster-token", TOKEN, "--initial-cluster-state", "new"]) for name, peer in peers.items()]
    for proc in procs:
        proc.start(wait=False)
    for proc in procs:
        proc.wait_ready(60)
    yield procs
    for proc in procs:
        proc.stop()


def _status(proc: EtcdProcess) -> Any:
    return proc.stubs().maintenance.Status(pb.StatusRequest(), timeout=5)


def _leader(procs: list[EtcdProcess], within: float = 5.0) -> int:
    """The leader once every member names the same one."""
    deadline = time.monotonic() + within
    while True:
        leaders = {_status(p).leader for p in procs}
        if len(leaders) == 1 and 0 not in leaders:
            return leaders.pop()
        assert time.monotonic() < deadline, f"members name different leaders: {leaders}"
        time.sleep(0.05)


def _move(proc: EtcdProcess, target: int) -> Any:
    return proc.stubs().maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=target), timeout=15)


@pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")
def test_cluster_id_of_a_multi_member_initial_cluster_is_etcds(tmp_path: Path) -> None:
    peers = {name: f"http://127.0.0.1:{free_port()}" for name in ("a", "b", "c")}
    client = f"http://127.0.0.1:{free_port()}"
    assert ETCD_BIN is not None
    # a member of three that cannot reach quorum still logs its cluster at once ("added member")
    proc = subprocess.Popen([ETCD_BIN, "--name", "a", "--data-dir", str(tmp_path / "a"), "--listen-client-urls", client,
                             "--advertise-client-urls", client, "--listen-peer-urls", peers["a"],
                             "--initial-advertise-peer-urls", peers["a"], "--initial-cluster", _initial_cluster(peers),
                             "--initial-cluster-token", TOKEN], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        added: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while len(added) < 3 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if '"msg":"added member"' in line:
                added.append(json.loads(line))
    finally:
        proc.kill()
        proc.wait()
    assert len(added) == 3
    config = Config(name="a", initial_cluster=_initial_cluster(peers), initial_cluster_token=TOKEN)
    assert {entry["cluster-id"] for entry in added} == {f"{config.cluster_id:x}"}
    assert added[0]["local-member-id"] == f"{config.member_id:x}"
    # one member: the ID etcd gives its default one-member cluster, as before
    assert f"{Config().cluster_id:x}" == "cdf818194e3a8c32"


def test_every_member_lists_all_three_from_the_start_under_etcds_cluster_id(members: list[EtcdProcess]) -> None:
    expected_cluster = None
    for proc in members:  # no wait: the first member to start has seen no heartbeat of the others yet
        resp = proc.stubs().cluster.MemberList(pb.MemberListRequest(), timeout=5)
        assert sorted(m.name for m in resp.members) == ["m0", "m1", "m2"]
        assert {m.clientURLs[0] for m in resp.members} == {p.endpoint for p in members}
        expected_cluster = expected_cluster or resp.header.cluster_id
        assert resp.header.cluster_id == expected_cluster
    config = Config(name="m0", initial_cluster=_initial_cluster_of(members), initial_cluster_token=TOKEN)
    assert expected_cluster == config.cluster_id


def _initial_cluster_of(procs: list[EtcdProcess]) -> str:
    args = procs[0].args
    return args[list(args).index("--initial-cluster") + 1]


def test_move_leader_hands_leadership_to_the_transferee(members: list[EtcdProcess]) -> None:
    leader_id = _leader(members)
    by_id = {_status(p).header.member_id: p for p in members}
    leader = by_id[leader_id]
    follower_id, follower = next((i, p) for i, p in by_id.items() if i != leader_id)
    with pytest.raises(grpc.RpcError) as raised:
        _move(follower, leader_id)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                             "etcdserver: not leader")
    with pytest.raises(grpc.RpcError) as raised:
        _move(leader, 0x1234)
    assert raised.value.details() == "etcdserver: bad leader transferee"
    _move(leader, leader_id)  # to itself: nothing to do
    assert _leader(members) == leader_id

    _move(leader, follower_id)
    assert _status(leader).leader == follower_id  # answered once the transferee leads
    assert _leader(members) == follower_id
    time.sleep(1.0)  # the old leader tries the free lock every 0.25 s: it must leave it to the transferee
    assert _leader(members, within=0) == follower_id
    with pytest.raises(grpc.RpcError) as raised:
        _move(leader, leader_id)
    assert raised.value.details() == "etcdserver: not leader"

    # the new leader is the reaper: a lease granted through the old leader still expires on time
    lease = leader.stubs().lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=5).ID
    leader.stubs().kv.Put(pb.PutRequest(key=b"leased", value=b"v", lease=lease), timeout=5)
    granted = time.monotonic()
    while follower.stubs().kv.Range(pb.RangeRequest(key=b"leased"), timeout=5).kvs:
        assert time.monotonic() < granted + 2.0 + 1.0, "the lease outlived its expiry under the new leader"
        time.sleep(0.05)


def test_a_transferee_that_died_times_the_transfer_out_and_the_cluster_leads_again(
        members: list[EtcdProcess]) -> None:
    leader_id = _leader(members)
    by_id = {_status(p).header.member_id: p for p in members}
    target_id, target = next((i, p) for i, p in by_id.items() if i != leader_id)
    target.kill()  # listed a few seconds more (its last heartbeat), never takes the lock
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        _move(by_id[leader_id], target_id)
    assert (raised.value.code(), raised.value.details()) == (
        grpc.StatusCode.UNKNOWN, "etcdserver: request timed out, leader transfer took too long")
    assert time.monotonic() - started >= 4.5
    alive = [p for p in members if p is not target]
    assert _leader(alive, within=5.0) in {i for i in by_id if i != target_id}


def test_schema_1_is_migrated_for_leader_transfer(pg_cluster: Any) -> None:
    from etcdlite.storage.postgres.schema import SCHEMA_VERSION, migrate

    url = pg_cluster.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("ALTER TABLE etcdlite_cluster DROP COLUMN transferee, DROP COLUMN transfer_until, "
                     "DROP COLUMN reaped_at")
        conn.execute("UPDATE etcdlite_schema SET version = 1")  # as etcdlite's first schema left it
        assert migrate(conn) == 1
        version = conn.execute("SELECT version FROM etcdlite_schema").fetchone()
        columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'etcdlite_cluster'").fetchall()}
    assert version == (SCHEMA_VERSION,) and SCHEMA_VERSION == 3
    assert {"transferee", "transfer_until", "reaped_at"} <= columns
