"""The numbers etcd reports (issue 12): raft index and term, the version, Downgrade's answers.

Side by side with etcd 3.5.1: ``etcdctl endpoint status -w json`` has the same fields and the same
raftIndex / raftTerm after the same writes and restarts (a new member: index 4 at term 2; one entry
per write; a restart is a new election: term + 1 and two entries).  Restarts of real etcd are
graceful (etcd 3.5.1 is no oracle after kill -9, etcd-io/etcd#13766); etcdlite is also killed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCD_BIN, Client, EtcdProcess, run_parallel


def status(srv: EtcdProcess) -> dict:  # type: ignore[type-arg]
    rc, out, err = srv.etcdctl("endpoint", "status", "-w", "json")
    assert rc == 0, err
    return json.loads(out)[0]["Status"]


def numbers(srv: EtcdProcess) -> tuple[int, int, int, int]:
    s = status(srv)
    return s["raftIndex"], s["raftAppliedIndex"], s["raftTerm"], s["header"]["raft_term"]


def targets() -> list[str]:
    return ["etcdlite"] + (["etcd"] if ETCD_BIN else [])


def test_raft_index_and_term_as_etcds(tmp_path: Path) -> None:
    def scenario(srv: EtcdProcess) -> list[object]:
        srv.start()
        c = Client(srv.stubs())
        out: list[object] = [numbers(srv)]
        c.put("a", "1")
        out.append(numbers(srv))
        c.get("a")  # reads are no entries
        c.txn(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))])  # nor read-only txns
        out.append(numbers(srv))
        lease = c.grant(100)["ID"]
        c.put("b", "2", lease=int(lease))
        c.compact(2)
        c.call("Lease.LeaseRevoke", pb.LeaseRevokeRequest(ID=int(lease)))
        out.append(numbers(srv))
        srv.restart()
        out.append(numbers(srv))
        srv.restart()
        Client(srv.stubs()).put("c", "3")
        out.append(numbers(srv))
        srv.stop()
        return out

    procs = {t: EtcdProcess(t, tmp_path / t) for t in targets()}
    results = run_parallel({t: (lambda p=p: scenario(p)) for t, p in procs.items()})
    want = [(4, 4, 2, 2), (5, 5, 2, 2), (5, 5, 2, 2), (9, 9, 2, 2), (11, 11, 3, 3), (14, 14, 4, 4)]
    for target, result in results.items():
        assert result == want, target


def test_term_grows_after_a_crash(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "d").start()
    try:
        Client(srv.stubs()).put("k", "v")
        assert numbers(srv) == (5, 5, 2, 2)
        srv.kill()
        srv.start()
        assert numbers(srv) == (7, 7, 3, 3)
        assert srv.stubs().kv.Put(pb.PutRequest(key=b"k", value=b"v")).header.raft_term == 3
    finally:
        srv.stop()


@pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")
def test_endpoint_status_fields_and_version_as_etcds(tmp_path: Path) -> None:
    procs = run_parallel({t: (lambda t=t: EtcdProcess(t, tmp_path / t).start()) for t in targets()})
    try:
        statuses = {t: status(p) for t, p in procs.items()}
        assert set(statuses["etcdlite"]) == set(statuses["etcd"])
        assert set(statuses["etcdlite"]["header"]) == set(statuses["etcd"]["header"])
        assert statuses["etcdlite"]["version"] == statuses["etcd"]["version"] == "3.5.1"
        tables = {t: p.etcdctl("endpoint", "status")[1].split(", ")[2] for t, p in procs.items()}
        assert tables["etcdlite"] == tables["etcd"] == "3.5.1"
    finally:
        for p in procs.values():
            p.stop()


DOWNGRADE_TARGETS = ["", "3", "3.4", "v3.4.0", "3.4.0", "03.4.0", "3.4.01", "3.4.0-alpha", "3.4.0-", "3.4.0+x",
                     "3.4.0.1", "3.4.x", " 3.4.0", "bad", "3.5.0", "3.3.0", "4.4.0"]


def test_downgrade_validate_parses_versions_as_etcd(differential) -> None:
    def scenario(c: Client) -> list[object]:
        return [c.call("Maintenance.Downgrade", pb.DowngradeRequest(action=pb.DowngradeRequest.VALIDATE, version=v))
                for v in DOWNGRADE_TARGETS]

    r = differential(scenario)
    wrong = ("INVALID_ARGUMENT", "etcdserver: wrong downgrade target version format")
    assert r[0] == r[1] == r[3] == wrong
    assert r[2]["version"] == "3.5.0"


def test_downgrade_enable_and_cancel(differential) -> None:
    """etcd 3.5.1 applies ENABLE/CANCEL but answers them only after its request timeout (7 s); the
    comparison takes the calls whose answers do not depend on that."""
    D = pb.DowngradeRequest

    def scenario(c: Client) -> list[object]:
        out = [c.call("Maintenance.Downgrade", D(action=D.CANCEL)),
               c.call("Maintenance.Downgrade", D(action=D.ENABLE, version="bad")),
               c.call("Maintenance.Downgrade", D(action=D.ENABLE, version="3.3.0"))]
        with c.quiet():
            c.call("Maintenance.Downgrade", D(action=D.ENABLE, version="3.4"))
        out += [c.call("Maintenance.Downgrade", D(action=D.ENABLE, version="3.4.0")),
                c.call("Maintenance.Downgrade", D(action=D.VALIDATE, version="3.4.0"))]
        with c.quiet():
            c.call("Maintenance.Downgrade", D(action=D.CANCEL))
        out += [c.call("Maintenance.Downgrade", D(action=D.CANCEL)),
                c.call("Maintenance.Downgrade", D(action=7))]
        return out

    r = differential(scenario)
    assert r == [("FAILED_PRECONDITION", "etcdserver: no inflight downgrade job"),
                 ("INVALID_ARGUMENT", "etcdserver: wrong downgrade target version format"),
                 ("INVALID_ARGUMENT", "etcdserver: invalid downgrade target version"),
                 ("FAILED_PRECONDITION", "etcdserver: cluster has a downgrade job in progress"),
                 ("FAILED_PRECONDITION", "etcdserver: cluster has a downgrade job in progress"),
                 ("FAILED_PRECONDITION", "etcdserver: no inflight downgrade job"),
                 ("UNKNOWN", "etcdserver: unknown method")]


def test_keys_gauge_counts_live_keys_as_etcds(tmp_path: Path) -> None:
    """etcd_debugging_mvcc_keys_total: a new key adds one, a delete takes one away, a restart keeps it."""
    import urllib.request

    from harness import delete_req

    def keys(srv: EtcdProcess) -> str:
        text = urllib.request.urlopen(srv.endpoint + "/metrics", timeout=10).read().decode()
        return next(line for line in text.splitlines() if line.startswith("etcd_debugging_mvcc_keys_total"))

    def scenario(srv: EtcdProcess) -> list[str]:
        srv.start()
        c = Client(srv.stubs())
        out = [keys(srv)]
        c.put("k", "v")
        c.put("1", "v")
        out.append(keys(srv))
        c.call("KV.DeleteRange", delete_req("1"))
        c.put("k", "w")
        c.compact(4)
        out.append(keys(srv))
        srv.restart()
        out.append(keys(srv))
        srv.stop()
        return out

    procs = {t: EtcdProcess(t, tmp_path / t) for t in targets()}
    for target, result in run_parallel({t: (lambda p=p: scenario(p)) for t, p in procs.items()}).items():
        assert [line.split()[-1] for line in result] == ["0", "2", "1", "1"], target
