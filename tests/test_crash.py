"""Crash loop: concurrent writers, SIGKILL at a random moment, restart, check the acknowledged state.

Each round, writer threads put, overwrite and delete keys, write key pairs in one txn, grant leases
(with IDs they choose) and attach keys, revoke leases, and compact, each over its own gRPC
channel, and record what the server acknowledged.  The server is killed at a random moment (a
small ``--snapshot-count`` makes that land during snapshots too), restarted, and then:

* every acknowledged write is there, exactly (value and mod revision), and nothing else is;
* the one request each writer had in flight is either fully applied or not at all (a txn's two
  keys, a lease revoke and its keys);
* leases that were granted and not revoked exist with their keys; revoked ones are gone;
* the revision never goes backwards, and an acknowledged compaction holds.

``ETCDLITE_CRASH_ROUNDS`` sets the number of rounds (default 5; ``make crash-test`` runs more).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as pb_grpc
from harness import EtcdProcess

ROUNDS = int(os.environ.get("ETCDLITE_CRASH_ROUNDS", "5"))
WRITERS = 4
LEASE_TTL = 600
COMPACTED = "etcdserver: mvcc: required revision has been compacted"

KeyState = tuple[bytes, int, int]  # (value, mod revision, lease)


@dataclass
class Pending:
    """The request a writer had in flight when the server died."""

    kind: str  # put | delete | pair | grant | revoke | compact
    keys: list[bytes] = field(default_factory=list)
    value: bytes = b""
    lease: int = 0
    revision: int = 0


class Writer:
    """One client: its own keys (prefix ``w<id>/``), its own model of what the server acknowledged."""

    def __init__(self, wid: int, seed: int) -> None:
        self.wid = wid
        self.prefix = f"w{wid}/".encode()
        self.rng = random.Random(seed)
        self.keys: dict[bytes, KeyState] = {}  # acknowledged live keys
        self.leases: dict[int, set[bytes]] = {}  # acknowledged live leases -> their keys
        self.revoked: set[int] = set()
        self.compacted = 0
        self.max_revision = 0
        self.n = 0
        self.pending: Pending | None = None
        self.failure: str = ""
        self.acks = 0

    # -- one round ---------------------------------------------------------------------------------
    def run_round(self, address: str, killed: threading.Event) -> None:
        """Write until the server dies; a request failing while it is alive is a failure."""
        with grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as channel:
            kv, lease = pb_grpc.KVStub(channel), pb_grpc.LeaseStub(channel)
            while True:
                try:
                    self.step(kv, lease)
                    self.acks += 1
                except grpc.RpcError as exc:
                    if not killed.is_set():
                        self.failure = f"{self.pending}: {exc.code().name} {exc.details()}"
                    return

    def _fresh(self, kind: str) -> bytes:
        self.n += 1
        return self.prefix + f"{kind}{self.n}".encode()

    def _ack(self, revision: int) -> None:
        self.max_revision = max(self.max_revision, revision)
        self.pending = None

    def step(self, kv: pb_grpc.KVStub, lease: pb_grpc.LeaseStub) -> None:
        rng = self.rng
        plain = [k for k, (_, _, le) in self.keys.items() if not le]
        roll = rng.random()
        value = f"{self.n}-{rng.random()}".encode()
        if roll < 0.30 or not plain:
            key = self._fresh("k")
            self._put(kv, key, value)
        elif roll < 0.45:
            self._put(kv, rng.choice(plain), value)
        elif roll < 0.55:
            key = rng.choice(plain)
            self.pending = Pending("delete", [key])
            r = kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=10)
            assert r.deleted == 1, (key, r)
            del self.keys[key]
            self._ack(r.header.revision)
        elif roll < 0.70:
            a, b = self._fresh("a"), self._fresh("b")
            self.pending = Pending("pair", [a, b], value)
            r = kv.Txn(pb.TxnRequest(
                compare=[pb.Compare(key=a, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0)],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=a, value=value)),
                         pb.RequestOp(request_put=pb.PutRequest(key=b, value=value))]), timeout=10)
            assert r.succeeded
            self.keys[a] = self.keys[b] = (value, r.header.revision, 0)
            self._ack(r.header.revision)
        elif roll < 0.82:
            lease_id = rng.randrange(1, 2**62)
            self.pending = Pending("grant", lease=lease_id)
            r = lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=LEASE_TTL), timeout=10)
            assert r.ID == lease_id
            self.leases[lease_id] = set()
            self._ack(r.header.revision)
            key = self._fresh("l")
            self._put(kv, key, value, lease_id)
            self.leases[lease_id].add(key)
        elif roll < 0.92 and self.leases:
            lease_id = rng.choice(sorted(self.leases))
            self.pending = Pending("revoke", sorted(self.leases[lease_id]), lease=lease_id)
            r = lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=10)
            for key in self.leases.pop(lease_id):
                del self.keys[key]
            self.revoked.add(lease_id)
            self._ack(r.header.revision)
        elif self.wid == 0 and self.max_revision - 20 > self.compacted:
            target = self.max_revision - 20
            self.pending = Pending("compact", revision=target)
            r = kv.Compact(pb.CompactionRequest(revision=target), timeout=10)
            self.compacted = target
            self._ack(r.header.revision)
        else:
            self._put(kv, self._fresh("k"), value)

    def _put(self, kv: pb_grpc.KVStub, key: bytes, value: bytes, lease: int = 0) -> None:
        self.pending = Pending("put", [key], value, lease)
        r = kv.Put(pb.PutRequest(key=key, value=value, lease=lease), timeout=10)
        self.keys[key] = (value, r.header.revision, lease)
        self._ack(r.header.revision)

    # -- after the restart -------------------------------------------------------------------------
    def resolve(self, actual: dict[bytes, KeyState], ttl: Callable[[int], pb.LeaseTimeToLiveResponse],
                compacted: Callable[[int], bool]) -> list[str]:
        """Fold the in-flight request into the model as the server decided it; list what is wrong."""
        p, self.pending = self.pending, None
        if p is None:
            return []
        problems: list[str] = []
        got = [actual.get(k) for k in p.keys]
        if p.kind == "put":
            (key,), (now,) = p.keys, got
            if now is not None and now[0] == p.value and now[2] == p.lease:
                self.keys[key] = now
                if p.lease in self.leases:
                    self.leases[p.lease].add(key)
            elif now != self.keys.get(key):
                problems.append(f"in-flight put of {key!r} left {now}, neither the old nor the new value")
        elif p.kind == "delete":
            if got[0] is None:
                self.keys.pop(p.keys[0], None)
        elif p.kind == "pair":
            if got[0] is not None or got[1] is not None:
                if not (got[0] and got[1] and got[0][:2] == got[1][:2] == (p.value, got[0][1])):
                    problems.append(f"txn half-applied: {p.keys} -> {got}")
                else:
                    self.keys[p.keys[0]], self.keys[p.keys[1]] = got[0], got[1]  # type: ignore[assignment]
        elif p.kind == "grant":
            if ttl(p.lease).TTL > 0:
                self.leases[p.lease] = set()
        elif p.kind == "revoke":
            alive = ttl(p.lease).TTL > 0
            present = [g is not None for g in got]
            if (alive and not all(present)) or (not alive and any(present)):
                problems.append(f"lease revoke half-applied: alive={alive}, keys present {present}")
            if not alive:
                for key in self.leases.pop(p.lease, set()):
                    self.keys.pop(key, None)
                self.revoked.add(p.lease)
        elif p.kind == "compact" and compacted(p.revision):
            self.compacted = p.revision  # it took effect: compacting there again would be refused
        return problems


def read_all(kv: pb_grpc.KVStub) -> tuple[dict[bytes, KeyState], int]:
    r = kv.Range(pb.RangeRequest(key=b"w", range_end=b"x"), timeout=10)
    return {x.key: (x.value, x.mod_revision, x.lease) for x in r.kvs}, r.header.revision


def check(writers: list[Writer], srv: EtcdProcess, revision_before: int) -> None:
    stubs = srv.stubs()

    def ttl(lease_id: int) -> pb.LeaseTimeToLiveResponse:
        return stubs.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10)

    def compacted(revision: int) -> bool:
        try:
            stubs.kv.Range(pb.RangeRequest(key=b"w", revision=revision - 1), timeout=10)
        except grpc.RpcError as exc:
            if exc.details() == COMPACTED:
                return True
            raise
        return False

    actual, revision = read_all(stubs.kv)
    problems: list[str] = []
    for w in writers:
        problems += w.resolve(actual, ttl, compacted)
    assert not problems, problems
    expected = {k: v for w in writers for k, v in w.keys.items()}
    missing = {k: v for k, v in expected.items() if actual.get(k) != v}
    extra = sorted(set(actual) - set(expected))
    assert not missing, f"acknowledged writes lost or changed: {[(k, v, actual.get(k)) for k, v in missing.items()]}"
    assert not extra, f"keys nobody acknowledged or had in flight: {extra}"
    assert revision >= max(revision_before, *(w.max_revision for w in writers)), "the revision went backwards"
    for w in writers:
        for lease_id, keys in w.leases.items():
            r = ttl(lease_id)
            assert r.TTL > 0 and r.grantedTTL == LEASE_TTL, (lease_id, r)
            assert set(r.keys) == keys, (lease_id, sorted(r.keys), sorted(keys))
        for lease_id in w.revoked:
            assert ttl(lease_id).TTL == -1, f"revoked lease {lease_id:x} is back"
    compacted = max(w.compacted for w in writers)
    if compacted > 1:
        try:
            stubs.kv.Range(pb.RangeRequest(key=b"w", revision=compacted - 1), timeout=10)
            raise AssertionError(f"acknowledged compaction at {compacted} was lost")
        except grpc.RpcError as exc:
            assert exc.details() == COMPACTED


def test_crash_loop_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("ETCDLITE_CRASH_SEED", str(time.time_ns())))
    seed = rng.randrange(2**32)
    writers = [Writer(i, seed + i) for i in range(WRITERS)]
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--snapshot-count", "150"])
    revision = 0
    total = 0
    try:
        for round_no in range(ROUNDS):
            srv.start()
            if round_no:
                check(writers, srv, revision)
            killed = threading.Event()
            threads = [threading.Thread(target=w.run_round, args=(srv.address, killed), daemon=True,
                                        name=f"writer-{w.wid}") for w in writers]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 1.0))
            revision = max(w.max_revision for w in writers)
            killed.set()
            srv.kill()
            for t, w in zip(threads, writers):
                t.join(15)
                assert not t.is_alive(), f"{t.name} hangs"
                assert not w.failure, f"round {round_no} (seed {seed}): a request failed before the crash: {w.failure}"
                total += w.acks
                w.acks = 0
        srv.start()
        check(writers, srv, revision)
        assert total > ROUNDS * 20, f"too few writes acknowledged to mean much ({total})"
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}\n--- server log tail:\n{srv.log(whole=True)[-3000:]}") from None
    finally:
        srv.stop()


def test_a_compaction_in_flight_at_the_kill_is_resolved() -> None:
    """Once it took effect, the next round must not compact at that revision again (etcd refuses)."""
    w = Writer(0, 1)
    w.pending = Pending("compact", revision=40)
    assert w.resolve({}, lambda lease: pb.LeaseTimeToLiveResponse(), lambda rev: rev == 40) == []
    assert w.compacted == 40 and w.pending is None
    w.pending = Pending("compact", revision=60)
    w.resolve({}, lambda lease: pb.LeaseTimeToLiveResponse(), lambda rev: False)
    assert w.compacted == 40
