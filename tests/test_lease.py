"""Lease service, differentially (see conftest.py): grant, revoke, keep-alive, time-to-live, list, expiry."""

from __future__ import annotations

import time

import grpc
import pytest

from harness import (
    E_LEASE_EXIST,
    E_LEASE_NOT_FOUND,
    E_LEASE_TTL_TOO_LARGE,
    ETCD_BIN,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    Client,
    Err,
    EtcdProcess,
    LeaseRef,
    pb,
    pb_grpc,
    put_req,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


def kv(key, value, create, mod, version, lease=0):
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod, "version": version,
            "lease": lease}


def test_grant(differential):
    def scenario(c: Client):
        out = {}
        out["generated"] = c.grant(60)
        out["chosen"] = c.grant(30, id=1000)
        out["exists"] = c.grant(30, id=1000)
        out["exists_other_ttl"] = c.grant(99, id=1000)
        out["exists_generated"] = c.grant(30, id=out["generated"]["ID"])
        out["ttl1"] = c.grant(1)
        out["ttl0"] = c.grant(0)
        out["ttl_negative"] = c.grant(-5)
        out["ttl_very_negative"] = c.grant(-(1 << 62))
        out["ttl_max"] = c.grant(MAX_LEASE_TTL)
        out["ttl_too_large"] = c.grant(MAX_LEASE_TTL + 1)
        out["ttl_huge"] = c.grant(1 << 62, id=5)
        out["id_negative"] = c.grant(20, id=-7)
        out["id_max"] = c.grant(20, id=(1 << 63) - 1)
        out["id_one"] = c.grant(20, id=1)
        out["list"] = c.leases()
        for name in ("generated", "chosen", "ttl1", "ttl0", "ttl_negative", "ttl_max", "id_negative", "id_max"):
            out["ttl:" + name] = c.ttl(out[name]["ID"])
        out["ttl:unknown"] = c.ttl(5)
        out["ttl:zero"] = c.ttl(0)
        out["rev"] = c.rev()
        return out

    r = differential(scenario)
    g = r["generated"]
    assert isinstance(g["ID"], LeaseRef) and g["TTL"] == 60 and g["error"] == "" and g["header"]["revision"] == 1
    assert r["chosen"] == {"header": {"revision": 1}, "ID": 1000, "TTL": 30, "error": ""}
    assert r["exists"] == E_LEASE_EXIST and r["exists_other_ttl"] == E_LEASE_EXIST
    assert r["exists_generated"] == E_LEASE_EXIST
    for name in ("ttl1", "ttl0", "ttl_negative", "ttl_very_negative"):
        assert r[name]["TTL"] == MIN_LEASE_TTL, name  # below the minimum: etcd's minimum TTL
    assert r["ttl_max"]["TTL"] == MAX_LEASE_TTL
    assert r["ttl_too_large"] == E_LEASE_TTL_TOO_LARGE and r["ttl_huge"] == E_LEASE_TTL_TOO_LARGE
    assert r["id_negative"]["ID"] == -7 and r["id_max"]["ID"] == (1 << 63) - 1 and r["id_one"]["ID"] == 1
    ids = [x["ID"] for x in r["list"]["leases"]]
    assert len(ids) == 10 and 1000 in ids and -7 in ids and g["ID"] in ids
    t = r["ttl:generated"]
    assert t["grantedTTL"] == 60 and t["TTL"] == 60 and t["keys"] == [] and t["ID"] == g["ID"]
    assert r["ttl:ttl1"]["grantedTTL"] == MIN_LEASE_TTL
    assert r["ttl:ttl_max"]["grantedTTL"] == MAX_LEASE_TTL
    assert r["ttl:unknown"] == {"header": {"revision": 1}, "ID": 5, "TTL": -1, "grantedTTL": 0, "keys": []}
    assert r["ttl:zero"]["TTL"] == -1
    assert r["rev"] == 1  # granting takes no revision


def test_revoke_deletes_attached_keys_in_one_revision(differential):
    def scenario(c: Client):
        out = {}
        a = c.grant(600)["ID"]
        b = c.grant(600)["ID"]
        empty = c.grant(600)["ID"]
        out["a"], out["b"] = a, b
        c.put("k1", "1", lease=a)        # 2
        c.put("k2", "2", lease=a)        # 3
        c.put("k3", "3", lease=a)        # 4
        c.put("plain", "p")              # 5
        c.put("moved", "m", lease=a)     # 6
        c.put("moved", "m2", lease=b)    # 7: now on b
        c.put("dropped", "d", lease=a)   # 8
        c.put("dropped", "d2")           # 9: no lease any more
        c.put("deleted", "x", lease=a)   # 10
        c.delete("deleted")              # 11
        out["ttl_a"] = c.ttl(a, keys=True)
        out["ttl_b"] = c.ttl(b, keys=True)
        out["revoke_empty"] = c.revoke(empty)
        out["rev_after_empty"] = c.rev()
        out["revoke"] = c.revoke(a)
        out["after"] = c.range(b"\0", b"\0")
        out["before"] = c.range(b"\0", b"\0", revision=11)
        out["k1_history"] = c.range("k1", revision=12)
        out["again"] = c.revoke(a)
        out["unknown"] = c.revoke(424242)
        out["zero"] = c.revoke(0)
        out["ttl_revoked"] = c.ttl(a, keys=True)
        out["keepalive_revoked"] = c.keepalive(a)
        out["put_on_revoked"] = c.put("k1", "again", lease=a)
        out["list"] = c.leases()
        out["next_put"] = c.put("n", "n")
        return out

    r = differential(scenario)
    a, b = r["a"], r["b"]
    assert r["ttl_a"]["keys"] == [b"k1", b"k2", b"k3"]
    assert r["ttl_b"]["keys"] == [b"moved"]
    assert r["revoke_empty"] == {"header": {"revision": 11}}
    assert r["rev_after_empty"] == 11  # revoking a lease without keys deletes nothing: no new revision
    assert r["revoke"] == {"header": {"revision": 12}}
    assert [x["key"] for x in r["after"]["kvs"]] == [b"dropped", b"moved", b"plain"]
    assert r["after"]["kvs"][1] == kv(b"moved", b"m2", 6, 7, 2, b)
    assert [x["key"] for x in r["before"]["kvs"]] == [b"dropped", b"k1", b"k2", b"k3", b"moved", b"plain"]
    assert r["k1_history"]["kvs"] == []
    assert r["again"] == E_LEASE_NOT_FOUND and r["unknown"] == E_LEASE_NOT_FOUND and r["zero"] == E_LEASE_NOT_FOUND
    assert r["ttl_revoked"]["TTL"] == -1
    assert r["keepalive_revoked"] == [{"header": {"revision": 12}, "ID": a, "TTL": 0}]
    assert r["put_on_revoked"] == E_LEASE_NOT_FOUND
    assert [x["ID"] for x in r["list"]["leases"]] == [b]
    assert r["next_put"]["header"]["revision"] == 13


def test_keepalive_and_timetolive(differential):
    def scenario(c: Client):
        out = {}
        a = c.grant(30)["ID"]
        b = c.grant(7, id=77)["ID"]
        out["a"] = a
        c.put("x", "1", lease=a)
        c.put("y", "1", lease=a)
        c.put("z", "1", lease=b)
        out["ttl_no_keys"] = c.ttl(a)
        out["ttl_keys"] = c.ttl(a, keys=True)
        out["ka_one"] = c.keepalive(a)
        out["ka_many"] = c.keepalive(a, b, 999, a)
        out["ka_zero"] = c.keepalive(0)
        out["ka_empty_stream"] = c.keepalive()
        time.sleep(1.2)
        with c.quiet():
            before = c.ttl(b)
        out["remaining_dropped"] = c.record("remaining < granted", int(before["TTL"]) < 7)
        out["ka_b"] = c.keepalive(b)
        out["ttl_b_after"] = c.ttl(b, keys=True)
        out["rev"] = c.rev()
        return out

    r = differential(scenario)
    a = r["a"]
    assert r["ttl_no_keys"] == {"header": {"revision": 4}, "ID": a, "TTL": 30, "grantedTTL": 30, "keys": []}
    assert r["ttl_keys"]["keys"] == [b"x", b"y"]
    assert r["ka_one"] == [{"header": {"revision": 4}, "ID": a, "TTL": 30}]
    assert [(x["ID"], x["TTL"]) for x in r["ka_many"]] == [(a, 30), (77, 7), (999, 0), (a, 30)]
    assert r["ka_zero"] == [{"header": {"revision": 4}, "ID": 0, "TTL": 0}]
    assert r["ka_empty_stream"] == []
    assert r["remaining_dropped"] is True
    assert r["ka_b"][0]["TTL"] == 7
    assert r["ttl_b_after"]["TTL"] == 7 and r["ttl_b_after"]["keys"] == [b"z"]
    assert r["rev"] == 4  # keep-alives and time-to-live take no revision


def test_keepalive_stream_stays_open(server):
    """A client keeps one stream open and sends a request a second: every one is answered."""
    c = server.client()
    lease = c.grant(5)["ID"]
    answers = []

    def requests():
        for _ in range(4):
            yield pb.LeaseKeepAliveRequest(ID=int(lease))
            time.sleep(0.4)

    for resp in server.stubs().lease.LeaseKeepAlive(requests(), timeout=10):
        answers.append((resp.ID, resp.TTL))
    assert answers == [(int(lease), 5)] * 4


def test_expiry_deletes_all_keys_in_one_revision(differential):
    def scenario(c: Client):
        out = {}
        start = time.monotonic()
        lease = c.grant(2)["ID"]
        kept = c.grant(2)["ID"]
        long = c.grant(600)["ID"]
        for k in ("e1", "e2", "e3"):
            c.put(k, "v", lease=lease)  # 2, 3, 4
        c.put("kept", "v", lease=kept)   # 5
        c.put("long", "v", lease=long)   # 6
        c.put("plain", "v")              # 7

        def expired():
            c.keepalive(kept)  # `kept` is kept alive meanwhile
            return c.range("e", "f")["count"] == 0

        with c.quiet():
            gone = wait_until(expired, timeout=6, interval=0.1)
        elapsed = time.monotonic() - start
        out["expired"] = c.record("expired", gone is not None)
        out["within_ttl_plus_1s"] = c.record("in time", elapsed <= 2 + 1.0 or elapsed)
        out["now"] = c.range(b"\0", b"\0")
        out["before_expiry"] = c.range("e", "f", revision=7)
        out["at_expiry"] = c.range("e", "f", revision=8)
        out["ttl_expired"] = c.ttl(lease, keys=True)
        out["keepalive_expired"] = c.keepalive(lease)
        out["revoke_expired"] = c.revoke(lease)
        # `kept` is kept alive for 3 s more by keep-alives, then left to expire
        with c.quiet():
            for _ in range(6):
                c.keepalive(kept)
                time.sleep(0.5)
        out["kept_alive"] = c.get("kept")
        with c.quiet():
            gone2 = wait_until(lambda: c.range("kept")["count"] == 0 or None, timeout=6, interval=0.1)
        out["kept_expired"] = c.record("kept expired", gone2 is not None)
        out["final"] = c.range(b"\0", b"\0")
        out["list"] = c.leases()
        out["long"] = long
        return out

    r = differential(scenario)
    assert r["expired"] is True and r["within_ttl_plus_1s"] is True
    assert [x["key"] for x in r["now"]["kvs"]] == [b"kept", b"long", b"plain"]
    assert r["now"]["header"]["revision"] == 8  # one revision for the three deletions
    assert len(r["before_expiry"]["kvs"]) == 3 and r["at_expiry"]["kvs"] == []
    assert r["ttl_expired"]["TTL"] == -1
    assert r["keepalive_expired"][0]["TTL"] == 0
    assert r["revoke_expired"] == E_LEASE_NOT_FOUND
    assert r["kept_alive"][0]["key"] == b"kept"
    assert r["kept_expired"] is True
    assert [x["key"] for x in r["final"]["kvs"]] == [b"long", b"plain"]
    assert r["final"]["header"]["revision"] == 9
    assert [x["ID"] for x in r["list"]["leases"]] == [r["long"]]


def test_lease_in_txn(differential):
    def scenario(c: Client):
        out = {}
        lease = c.grant(600)["ID"]
        out["txn"] = c.txn([], [put_req("a", "1", lease=lease), put_req("b", "1", lease=lease)])
        out["ttl"] = c.ttl(lease, keys=True)
        out["unknown"] = c.txn([], [put_req("c", "1", lease=31337)])
        out["revoke"] = c.revoke(lease)
        out["left"] = c.range(b"\0", b"\0")
        return out

    r = differential(scenario)
    assert r["txn"]["header"]["revision"] == 2
    assert r["ttl"]["keys"] == [b"a", b"b"]
    assert r["unknown"] == E_LEASE_NOT_FOUND
    assert r["revoke"]["header"]["revision"] == 3
    assert r["left"]["kvs"] == [] and r["left"]["header"]["revision"] == 3
    assert not isinstance(r["txn"], Err)


def _keepalive_racing_revoke(srv: EtcdProcess, trials: int) -> tuple[int, int]:
    """Of ``trials`` keep-alives sent right after a revoke (the revoke on another connection): how many
    answered TTL 0 with a header revision below the revoke's (the server let the keep-alive see a
    revoke that was not durable yet), and how many the client heard before its revoke returned."""
    import queue
    import threading

    stubs = srv.stubs()
    other = grpc.insecure_channel(srv.address)
    revoker = pb_grpc.LeaseStub(other)
    below = early = 0
    try:
        for _ in range(trials):
            lease = stubs.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10).ID
            requests: queue.Queue[pb.LeaseKeepAliveRequest | None] = queue.Queue()
            requests.put(pb.LeaseKeepAliveRequest(ID=lease))
            stream = stubs.lease.LeaseKeepAlive(iter(requests.get, None), timeout=10)
            assert next(stream).TTL == 60  # the stream is open
            done = threading.Event()
            revoke = revoker.LeaseRevoke.future(pb.LeaseRevokeRequest(ID=lease), timeout=10)
            revoke.add_done_callback(lambda _f, done=done: done.set())
            requests.put(pb.LeaseKeepAliveRequest(ID=lease))
            answer = next(stream)
            heard_first = not done.is_set()
            revoked = revoke.result()
            if answer.TTL == 0:
                early += heard_first
                below += answer.header.revision < revoked.header.revision
            requests.put(None)
            for _ in stream:
                pass
    finally:
        other.close()
    return below, early


def test_keepalive_does_not_see_a_revoke_before_it_is_durable(server_factory):
    """etcd answers a keep-alive only once its applied index caught up (LeaseRenew waits), so a racing
    revoke it reports has happened at the answer's revision.  etcdlite's keep-alive waits until every
    applied grant and revoke is durable: a TTL-0 answer never carries a revision below the revoke's;
    and it gives the revoke's answer a head start, so the client hears "lease gone" before its revoke
    returns no more often than from etcd (issue 12 item 4: a third of the trials before)."""
    lite_below, lite_early = _keepalive_racing_revoke(server_factory("etcdlite"), 200)
    assert lite_below == 0
    if ETCD_BIN is not None:  # the rate etcd has (12-18% here): etcdlite's may not be higher
        etcd_below, etcd_early = _keepalive_racing_revoke(server_factory("etcd"), 200)
        assert etcd_below == 0
        assert lite_early <= etcd_early, (lite_early, etcd_early)
    else:
        assert lite_early <= 10
