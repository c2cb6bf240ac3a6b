"""HashKV, MoveLeader and Downgrade answer as a one-member etcd does.

etcdlite keeps the versions etcd's key bucket keeps, keyed by the same
main/sub revisions, so HashKV is the very number real etcd computes after the
same operations — also below and across compactions, and after a restart.
"""

from __future__ import annotations

import random

import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.timeout(120)


def _op(key: str, value: str = "", delete: bool = False, end: str = "") -> pb.RequestOp:
    if delete:
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode(), range_end=end.encode()))
    return pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value.encode()))


def _hashes(c, upto: int) -> list:
    return [c.call("Maintenance.HashKV", pb.HashKVRequest(revision=rev)) for rev in range(-1, upto + 2)]


def history_scenario(seed: int):
    def scenario(c):
        rng = random.Random(seed)  # the same operations on each server
        out = []
        lease = c.grant(60, id=0x1234)  # a chosen ID: the lease ID is part of what is hashed
        with c.quiet():
            for i in range(40):
                k = f"k{rng.randrange(8)}"
                roll = rng.random()
                if roll < 0.4:
                    c.put(k, f"v{i}")
                elif roll < 0.55:
                    c.put(k, f"l{i}", lease=int(lease["ID"]))
                elif roll < 0.7:
                    c.delete(k)
                elif roll < 0.85:
                    # several puts and a range delete in one revision: distinct sub-revisions
                    c.txn(success=[_op(f"t{i}a", "x"), _op(f"t{i}b", "y"), _op("k", delete=True, end="k4")])
                else:
                    c.delete("k", "l")
            rev = c.rev()
        out.append(_hashes(c, rev))
        with c.quiet():
            c.compact(rev // 2)
        out.append(_hashes(c, rev))
        with c.quiet():
            c.call("Lease.LeaseRevoke", pb.LeaseRevokeRequest(ID=int(lease["ID"])))
            c.compact(c.rev())
        out.append(_hashes(c, c.rev()))
        return out

    return scenario


@pytest.mark.parametrize("seed", [1, 2])
def test_hashkv_equals_etcds(differential, seed):
    result = differential(history_scenario(seed))
    first = result[0]
    assert first[0]["hash"] == 1084519789  # crc32c("key"): nothing at revision -1
    assert len({h["hash"] for h in first if isinstance(h, dict)}) > 10


def test_hashkv_is_stable_across_restart(server_factory):
    from harness import Client  # noqa: PLC0415 - the harness loads etcdlite's stubs

    srv = server_factory("etcdlite")
    c = Client(srv.stubs())
    for i in range(20):
        c.put(f"k{i % 5}", str(i))
    c.compact(10)
    before = c.call("Maintenance.HashKV", pb.HashKVRequest())
    srv.stop()
    srv.start()
    after = Client(srv.stubs()).call("Maintenance.HashKV", pb.HashKVRequest())
    assert before == after


def test_move_leader_and_downgrade(differential):
    def scenario(c):
        with c.quiet():
            me = c.call("Cluster.MemberList", pb.MemberListRequest())["members"][0]["ID"]
        return [
            c.call("Maintenance.MoveLeader", pb.MoveLeaderRequest(targetID=me)),
            c.call("Maintenance.MoveLeader", pb.MoveLeaderRequest(targetID=1234)),
            c.call("Maintenance.Downgrade", pb.DowngradeRequest(action=pb.DowngradeRequest.VALIDATE,
                                                                version="3.4.0")),
            c.call("Maintenance.Downgrade", pb.DowngradeRequest(action=pb.DowngradeRequest.VALIDATE,
                                                                version="3.5.0")),
            c.call("Maintenance.Downgrade", pb.DowngradeRequest(action=pb.DowngradeRequest.VALIDATE,
                                                                version="bad")),
        ]

    r = differential(scenario)
    assert r[1] == ("FAILED_PRECONDITION", "etcdserver: bad leader transferee")
    assert r[2]["version"] == "3.5.0"
