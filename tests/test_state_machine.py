"""A Hypothesis state machine sends the same random Put/Txn/Lease/Compact sequence to etcdlite and to
real etcd and compares every answer (fakeredis-style).

Both servers live for the whole test and receive identical requests, so their
revisions stay aligned across examples; lease IDs are client-chosen (from a
small pool) so that they, too, are identical on both sides.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.timeout(600)

KEYS = [b"a", b"ab", b"abc", b"b", b"foo/1", b"foo/2", b"foo0", b"\xff"]
RANGE_ENDS = [b"", b"\x00", b"b", b"foo0", b"foo/", b"a"]  # includes an end before the key
VALUES = [b"", b"x", b"y", b"zz"]
LEASE_IDS = [0x10, 0x11, 0x12, 0x13]
LONG_TTLS = [60, 600, 3600]

keys = st.sampled_from(KEYS)
ends = st.sampled_from(RANGE_ENDS)
values = st.sampled_from(VALUES)
lease_ids = st.sampled_from([0, *LEASE_IDS])
mostly_no_lease = st.sampled_from([0, 0, 0, 0, 0, *LEASE_IDS])


@st.composite
def puts(draw) -> pb.PutRequest:
    ignore_value = draw(st.integers(0, 5)) == 0
    ignore_lease = draw(st.integers(0, 5)) == 0
    return pb.PutRequest(key=draw(keys), value=b"" if ignore_value else draw(values),
                         lease=0 if ignore_lease else draw(mostly_no_lease), prev_kv=draw(st.booleans()),
                         ignore_value=ignore_value, ignore_lease=ignore_lease)


@st.composite
def deletes(draw) -> pb.DeleteRangeRequest:
    end = draw(ends) if draw(st.integers(0, 2)) == 0 else b""  # mostly one key: ranges wipe the store
    return pb.DeleteRangeRequest(key=draw(keys), range_end=end, prev_kv=draw(st.booleans()))


@st.composite
def ranges(draw, revision: int = 0) -> pb.RangeRequest:
    sort_order = draw(st.sampled_from([0, 1, 2]))
    sort_target = draw(st.sampled_from([0, 1, 2, 3, 4]))
    r = pb.RangeRequest(key=draw(keys), range_end=draw(ends), limit=draw(st.sampled_from([0, 1, 2, 5])),
                        revision=revision, sort_order=sort_order, sort_target=sort_target,
                        keys_only=draw(st.integers(0, 3)) == 0, count_only=draw(st.integers(0, 3)) == 0,
                        serializable=draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:
        r.min_mod_revision = draw(st.integers(0, 40))
        r.max_create_revision = draw(st.integers(0, 40))
    return r


@st.composite
def compares(draw) -> pb.Compare:
    target = draw(st.sampled_from(["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]))
    c = pb.Compare(key=draw(keys), result=draw(st.sampled_from([0, 1, 2, 3])),
                   target=pb.Compare.CompareTarget.Value(target))
    if draw(st.booleans()):
        c.range_end = draw(ends)
    if target == "VERSION":
        c.version = draw(st.integers(0, 4))
    elif target == "CREATE":
        c.create_revision = draw(st.integers(0, 30))
    elif target == "MOD":
        c.mod_revision = draw(st.integers(0, 30))
    elif target == "VALUE":
        c.value = draw(values)
    else:
        c.lease = draw(lease_ids)
    return c


@st.composite
def request_ops(draw, depth: int = 0) -> pb.RequestOp:
    kinds = ["put", "delete", "range"] + (["txn"] if depth == 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "put":
        return pb.RequestOp(request_put=draw(puts()))
    if kind == "delete":
        return pb.RequestOp(request_delete_range=draw(deletes()))
    if kind == "range":
        return pb.RequestOp(request_range=draw(ranges()))
    return pb.RequestOp(request_txn=draw(txns(depth + 1)))


@st.composite
def txns(draw, depth: int = 0) -> pb.TxnRequest:
    return pb.TxnRequest(compare=draw(st.lists(compares(), max_size=2)),
                         success=draw(st.lists(request_ops(depth), max_size=3)),
                         failure=draw(st.lists(request_ops(depth), max_size=3)))


class EtcdPair(RuleBasedStateMachine):
    """Each rule sends one request to both servers and requires the same answer."""

    clients: dict = {}

    def ask(self, method: str, request) -> object:
        answers = {name: c.call(method, request) for name, c in self.clients.items()}
        lite, etcd = answers["etcdlite"], answers["etcd"]
        assert lite == etcd, f"{method}({request}) etcdlite={lite!r} etcd={etcd!r}"
        return etcd

    def revision(self) -> int:
        return self.clients["etcd"].rev()

    @initialize()
    def start_clean(self) -> None:
        # leases from an earlier example would make "lease already exists" depend on example order
        for lease_id in LEASE_IDS:
            self.ask("Lease.LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))

    @rule(r=puts())
    def put(self, r: pb.PutRequest) -> None:
        self.ask("KV.Put", r)

    @rule(key=keys, value=values)
    def put_plain(self, key: bytes, value: bytes) -> None:
        self.ask("KV.Put", pb.PutRequest(key=key, value=value))

    @rule(key=keys, value=values, lease_id=st.sampled_from(LEASE_IDS))
    def put_leased(self, key: bytes, value: bytes, lease_id: int) -> None:
        self.ask("Lease.LeaseGrant", pb.LeaseGrantRequest(ID=lease_id, TTL=600))  # may already exist
        self.ask("KV.Put", pb.PutRequest(key=key, value=value, lease=lease_id))

    @rule(r=deletes())
    def delete(self, r: pb.DeleteRangeRequest) -> None:
        self.ask("KV.DeleteRange", r)

    @rule(r=ranges(), back=st.integers(-2, 8))
    def range(self, r: pb.RangeRequest, back: int) -> None:
        if back >= 0:
            r.revision = max(0, self.revision() - back)
        else:
            r.revision = self.revision() - back  # a future revision
        self.ask("KV.Range", r)

    @rule(r=txns())
    def txn(self, r: pb.TxnRequest) -> None:
        self.ask("KV.Txn", r)

    @rule(back=st.integers(-1, 12), physical=st.booleans(), often=st.integers(0, 2))
    def compact(self, back: int, physical: bool, often: int) -> None:
        if often == 0:  # compaction a third as often as other requests, so history builds up
            self.ask("KV.Compact", pb.CompactionRequest(revision=self.revision() - back, physical=physical))

    @rule(lease_id=st.sampled_from(LEASE_IDS), ttl=st.sampled_from(LONG_TTLS))
    def grant(self, lease_id: int, ttl: int) -> None:
        self.ask("Lease.LeaseGrant", pb.LeaseGrantRequest(ID=lease_id, TTL=ttl))

    @rule(ttl=st.sampled_from([-5, 0, 1, 2, 9_000_000_000, 9_000_000_001]))
    def grant_odd_ttl(self, ttl: int) -> None:
        # granted and revoked at once: a short lease must not expire between two servers' answers
        answer = self.ask("Lease.LeaseGrant", pb.LeaseGrantRequest(ID=0x99, TTL=ttl))
        if isinstance(answer, dict):
            self.ask("Lease.LeaseRevoke", pb.LeaseRevokeRequest(ID=0x99))

    @rule(lease_id=lease_ids)
    def revoke(self, lease_id: int) -> None:
        self.ask("Lease.LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))

    @rule(lease_id=lease_ids, with_keys=st.booleans())
    def time_to_live(self, lease_id: int, with_keys: bool) -> None:
        self.ask("Lease.LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=lease_id, keys=with_keys))

    @rule(lease_id=lease_ids)
    def keep_alive(self, lease_id: int) -> None:
        answers = {name: c.keepalive(lease_id) for name, c in self.clients.items()}
        assert answers["etcdlite"] == answers["etcd"]

    @invariant()
    def same_keys_and_leases(self) -> None:
        if self.clients:
            self.ask("KV.Range", pb.RangeRequest(key=b"\x00", range_end=b"\x00"))
            self.ask("Lease.LeaseLeases", pb.LeaseLeasesRequest())


def test_random_operations_answer_as_etcd(server_factory):
    from harness import ETCD_BIN, Client

    if ETCD_BIN is None:
        pytest.skip("real etcd is not installed")
    servers = {target: server_factory(target) for target in ("etcdlite", "etcd")}
    EtcdPair.clients = {name: Client(srv.stubs(), name=name) for name, srv in servers.items()}
    try:
        run_state_machine_as_test(EtcdPair, settings=settings(
            max_examples=40, stateful_step_count=40, deadline=None,
            suppress_health_check=list(HealthCheck)))
    finally:
        EtcdPair.clients = {}
