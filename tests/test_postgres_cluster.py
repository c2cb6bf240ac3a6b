"""Three etcdlite processes over one PostgreSQL database, with faults: ``kill -9`` of instances at
random while clients write and read through all of them, a database restart, a reaper that dies.

The histories are checked for linearizability (every acknowledged write present, no stale read);
watchers that follow the cluster across instance failures must all see the same events, in order,
exactly once, with prev_kv.  Real etcd is not the oracle here (3.5.1 loses data after kill -9, see
etcd-io/etcd#13766): the invariants are.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from linearizability import ANY, Op, check

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCDCTL, EtcdProcess, etcdctl, free_port

pytest.importorskip("psycopg")

PREFIX = b"lin/"
UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
MAYBE_SLACK = 0.3  # an unanswered write may still commit a little after its client saw its instance die


class Cluster:
    """N etcdlite instances over one database; ``kill``/``start`` by index."""

    def __init__(self, base: Path, url: str, count: int, extra: tuple[str, ...] = ()) -> None:
        self.procs = []
        for n in range(count):
            peer = f"http://127.0.0.1:{free_port()}"
            self.procs.append(EtcdProcess("etcdlite", base / f"node{n}", name=f"node{n}", args=[
                "--backend", url, "--initial-advertise-peer-urls", peer, *extra]))
        self.lock = threading.Lock()

    def start(self) -> Cluster:
        for proc in self.procs:
            proc.start(wait=False)
        for proc in self.procs:
            proc.wait_ready(60)
        return self

    def alive(self) -> list[EtcdProcess]:
        with self.lock:
            return [p for p in self.procs if p.alive()]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def cluster(pg_cluster: Any, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(count: int = 3, extra: tuple[str, ...] = (), url: str | None = None) -> Cluster:
        c = Cluster(tmp_path, url or pg_cluster.new_database(), count, extra).start()
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()


def _stub(proc: EtcdProcess) -> Any:
    return proc.stubs().kv


# -- a client's operations, recorded ------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.history: list[Op] = []
        self.lock = threading.Lock()
        self.values = iter(range(1, 10**9))

    def add(self, op: Op) -> None:
        with self.lock:
            self.history.append(op)

    def unique(self, client: int) -> bytes:
        with self.lock:
            return b"c%d-%d" % (client, next(self.values))


def _one_op(kv: Any, rng: random.Random, client: int, rec: Recorder) -> None:
    key = PREFIX + b"%d" % rng.randrange(4)
    kind = rng.choice(["put", "put", "get", "get", "delete", "cas"])
    value = rec.unique(client)
    call = time.monotonic()
    try:
        if kind == "put":
            resp = kv.Put(pb.PutRequest(key=key, value=value, prev_kv=True), timeout=10)
            op = Op(client, kind, key, call, time.monotonic(), value,
                    resp.prev_kv.value if resp.HasField("prev_kv") else None)
        elif kind == "get":
            resp = kv.Range(pb.RangeRequest(key=key), timeout=10)
            op = Op(client, kind, key, call, time.monotonic(), None, resp.kvs[0].value if resp.kvs else None)
        elif kind == "delete":
            resp = kv.DeleteRange(pb.DeleteRangeRequest(key=key, prev_kv=True), timeout=10)
            op = Op(client, kind, key, call, time.monotonic(), None, resp.prev_kvs[0].value if resp.prev_kvs else None)
        else:
            expected = rng.choice([None, b"c%d" % rng.randrange(3)])  # mostly fails, sometimes on absence
            last = next((o.input for o in reversed(rec.history) if o.key == key and o.kind == "put"), None)
            expected = last if rng.random() < 0.5 else expected
            cmp = (pb.Compare(key=key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
                   if expected is None else
                   pb.Compare(key=key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=expected))
            resp = kv.Txn(pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(request_put=pb.PutRequest(
                key=key, value=value))], failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]), timeout=10)
            read = None
            if not resp.succeeded and resp.responses[0].response_range.kvs:
                read = resp.responses[0].response_range.kvs[0].value
            op = Op(client, kind, key, call, time.monotonic(), (expected, value), (resp.succeeded, read))
    except grpc.RpcError as exc:
        if exc.code() not in UNANSWERED:
            raise
        time.sleep(0.05)  # as a client backs off before it tries again (elsewhere)
        if kind == "get" or _never_sent(exc):
            return  # a read that got no answer, or a request that never reached a server, had no effect
        inp = (expected, value) if kind == "cas" else (value if kind == "put" else None)
        op = Op(client, kind, key, call, time.monotonic() + MAYBE_SLACK, inp, ANY, maybe=True)
    rec.add(op)


def _never_sent(exc: grpc.RpcError) -> bool:
    """The instance was down before the call: gRPC could not connect, nothing was sent."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details)


def _client(c: Cluster, client: int, rec: Recorder, until: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        alive = c.alive()
        if not alive:
            time.sleep(0.05)
            continue
        proc = rng.choice(alive)
        try:
            kv = _stub(proc)
        except Exception:  # noqa: BLE001 - killed between the choice and here
            continue
        _one_op(kv, rng, client, rec)


# -- watchers that follow the cluster across failures ---------------------------------------------------

Event = tuple[int, int, bytes, bytes, bytes]  # (revision, type, key, value, prev value)


class Follower(threading.Thread):
    """Watches the prefix from revision 2, reconnecting to a live instance (from the next revision)
    whenever its instance dies, as etcd's clients do."""

    def __init__(self, c: Cluster, home: int) -> None:
        super().__init__(daemon=True)
        self.c, self.home = c, home
        self.events: list[Event] = []
        self.until = 0
        self.stop_at = time.monotonic() + 600
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _follow(self) -> None:
        while time.monotonic() < self.stop_at:
            if self.until and self.events and self.events[-1][0] >= self.until:
                return
            procs = [p for p in self.c.alive() if p is self.c.procs[self.home]] or self.c.alive()
            if not procs:
                time.sleep(0.05)
                continue
            start = self.events[-1][0] + 1 if self.events else 2
            try:
                self._stream(procs[0], start)
            except grpc.RpcError:
                time.sleep(0.05)

    def _stream(self, proc: EtcdProcess, start: int) -> None:
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX[:-1] + bytes([PREFIX[-1] + 1]), start_revision=start, prev_kv=True,
            progress_notify=True))
        stream = proc.stubs().watch.Watch(iter([create]), timeout=2.0 if self.until else 30.0)
        for resp in stream:
            assert not resp.canceled, resp
            for ev in resp.events:
                prev = ev.prev_kv.value if ev.HasField("prev_kv") else b"-"
                self.events.append((ev.kv.mod_revision, ev.type, ev.kv.key, ev.kv.value, prev))
            if self.until and self.events and self.events[-1][0] >= self.until:
                stream.cancel()
                return


def _killer(c: Cluster, until: float, seed: int, kills: list[str]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        time.sleep(rng.uniform(1.0, 2.5))
        victims = c.alive()
        if len(victims) < 2:
            continue
        victim = rng.choice(victims)
        with c.lock:
            victim.kill()
        kills.append(victim.name)
        time.sleep(rng.uniform(0.1, 0.8))
        victim.start(wait=False)


def _head(c: Cluster) -> int:
    for _ in range(100):
        for proc in c.alive():
            try:
                return int(_stub(proc).Range(pb.RangeRequest(key=b"x"), timeout=5).header.revision)
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    raise AssertionError("no instance answers")


@pytest.mark.timeout(300)  # 20 s of faults, then restarts, the check and the watchers catching up
def test_three_instances_under_kill_9_stay_one_linearizable_etcd(cluster: Callable[..., Cluster],
                                                                 tmp_path: Path) -> None:
    c = cluster(3)
    seed = random.randrange(1 << 30)
    rec = Recorder()
    followers = [Follower(c, home) for home in range(3)]
    for f in followers:
        f.start()
    until = time.monotonic() + 20
    kills: list[str] = []
    threads = [threading.Thread(target=_client, args=(c, i, rec, until, seed + i)) for i in range(4)]
    threads.append(threading.Thread(target=_killer, args=(c, until, seed, kills)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc in c.procs:
        proc.wait_ready(60)
    # the final state, read through every instance, closes the history
    for i, proc in enumerate(c.procs):
        for k in range(4):
            key = PREFIX + b"%d" % k
            call = time.monotonic()
            resp = _stub(proc).Range(pb.RangeRequest(key=key), timeout=10)
            rec.add(Op(100 + i, "get", key, call, time.monotonic(), None, resp.kvs[0].value if resp.kvs else None))
    answered = [op for op in rec.history if not op.maybe]
    assert len(answered) > 100, f"too few operations were answered ({len(answered)}): seed {seed}"
    assert kills, "nothing was killed"
    verdict = check(rec.history)
    if not verdict.ok:
        (tmp_path / "history.txt").write_text("\n".join(map(repr, sorted(rec.history, key=lambda o: o.call))))
    assert verdict.ok, f"seed {seed}, kills {kills}: {verdict.explain()} (history in {tmp_path})"
    head = _head(c)
    for f in followers:
        f.until = head
        f.join(60)
        assert f.error is None, f.error
    streams = [f.events for f in followers]
    assert streams[0] == streams[1] == streams[2], f"seed {seed}: the watchers saw different events"
    revisions = [ev[0] for ev in streams[0]]
    assert revisions == sorted(set(revisions)), "events out of order or twice"
    # only the prefix is written: every revision is one of its writes, none skipped
    assert revisions == list(range(2, head + 1)), f"seed {seed}: revisions are not gap-free"


def test_a_dead_reaper_is_replaced_and_leases_still_expire_on_time(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3)
    members = _members(c.procs[0], 3)
    deadline = time.monotonic() + 10
    while len({_stub_maintenance(p).Status(pb.StatusRequest(), timeout=5).leader for p in c.procs}) != 1:
        assert time.monotonic() < deadline, "the instances do not agree on the reaper"
        time.sleep(0.1)
    status = _stub_maintenance(c.procs[0]).Status(pb.StatusRequest(), timeout=5)
    reaper = next(p for p in c.procs if p.name == members[status.leader])
    others = [p for p in c.procs if p is not reaper]
    lease = others[0].stubs().lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=5).ID
    granted = time.monotonic()
    _stub(others[0]).Put(pb.PutRequest(key=b"reaped", value=b"x", lease=lease), timeout=5)
    time.sleep(1.0)
    reaper.kill()
    killed = time.monotonic()
    deadline = granted + 2.0 + 1.0 + 0.5  # its expiry, a new reaper within a second, the revoke within 0.5 s
    while _stub(others[1]).Range(pb.RangeRequest(key=b"reaped"), timeout=5).kvs:
        assert time.monotonic() < deadline, "the lease outlived its reaper"
        time.sleep(0.05)
    assert time.monotonic() >= granted + 2.0 - 0.1
    while (new_leader := _stub_maintenance(others[1]).Status(pb.StatusRequest(), timeout=5).leader) == status.leader:
        assert time.monotonic() < killed + 1.0, "Status still names the dead reaper"
        time.sleep(0.05)
    assert new_leader in members and new_leader != status.leader


def test_leases_get_their_full_ttl_again_when_the_whole_cluster_comes_back(cluster: Callable[..., Cluster]) -> None:
    """As etcd: a lease outlives a cluster that was down longer than its TTL (nobody could keep it alive),
    with its full TTL from the restart (etcd's lessor refreshes every lease when a member becomes leader)."""
    c = cluster(2)
    lease = c.procs[0].stubs().lease.LeaseGrant(pb.LeaseGrantRequest(TTL=5), timeout=5).ID
    _stub(c.procs[0]).Put(pb.PutRequest(key=b"kept", value=b"x", lease=lease), timeout=5)
    c.procs[0].kill()  # one crashes, the other is stopped: down either way
    c.procs[1].stop()
    time.sleep(6.0)  # past the lease's expiry
    c.start()
    restarted = time.monotonic()
    ttl = c.procs[1].stubs().lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True), timeout=5)
    assert 2 <= ttl.TTL <= 5 and list(ttl.keys) == [b"kept"], ttl
    assert _stub(c.procs[0]).Range(pb.RangeRequest(key=b"kept"), timeout=5).kvs
    while _stub(c.procs[1]).Range(pb.RangeRequest(key=b"kept"), timeout=5).kvs:  # and it still expires
        assert time.monotonic() < restarted + 5.0 + 1.5, "the lease never expired after the restart"
        time.sleep(0.05)


def _members(proc: EtcdProcess, count: int) -> dict[int, str]:
    """The member list once it shows ``count`` members (others are listed from their first heartbeat)."""
    deadline = time.monotonic() + 10
    while True:
        listed = proc.stubs().cluster.MemberList(pb.MemberListRequest(), timeout=5).members
        if len(listed) == count or time.monotonic() > deadline:
            return {m.ID: m.name for m in listed}
        time.sleep(0.2)


def _stub_maintenance(proc: EtcdProcess) -> Any:
    return proc.stubs().maintenance


def _health(proc: EtcdProcess) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{proc.endpoint}/health", timeout=10) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def test_a_database_restart_is_survived(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    import pgcluster
    pg = pgcluster.PgCluster.start()  # its own server: the restart must not disturb other tests
    try:
        c = cluster(2, url=pg.new_database())
        a, b = c.procs
        acked = []
        for i in range(20):
            _stub(a if i % 2 else b).Put(pb.PutRequest(key=b"db/%d" % i, value=b"before"), timeout=5)
            acked.append(b"db/%d" % i)
        pg.down(immediate=True)  # a crash of the database
        time.sleep(1.5)
        with pytest.raises(grpc.RpcError) as raised:
            _stub(a).Put(pb.PutRequest(key=b"db/x", value=b"during"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() in ("etcdserver: no leader", "etcdserver: request timed out")
        assert _health(a)["health"] == "false"
        assert _stub(b).Range(pb.RangeRequest(key=b"db/1", serializable=True), timeout=5).kvs  # local reads serve
        pg.up()
        deadline = time.monotonic() + 30
        while True:
            try:
                _stub(a).Put(pb.PutRequest(key=b"db/after", value=b"after"), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "no reconnection"
                time.sleep(0.2)
        assert _stub(b).Range(pb.RangeRequest(key=b"db/after"), timeout=10).kvs[0].value == b"after"
        got = _stub(b).Range(pb.RangeRequest(key=b"db/", range_end=b"db0"), timeout=10)
        assert {kv.key for kv in got.kvs} >= set(acked)
        assert _health(a)["health"] == "true" and _health(b)["health"] == "true"
        assert a.alive() and b.alive()
        # SIGTERM without a database stops at once (nothing it holds can be finished anyway)
        pg.down(immediate=True)
        with pytest.raises(grpc.RpcError):
            _stub(a).Put(pb.PutRequest(key=b"db/y", value=b"down"), timeout=3)
        started = time.monotonic()
        assert a.stop(timeout=15) == 0
        assert time.monotonic() - started < 5
    finally:
        pg.stop()


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed")
def test_member_list_and_endpoint_status_show_the_live_instances(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3)
    a, b, dead = c.procs
    deadline = time.monotonic() + 5  # an instance is listed from the others' next heartbeat (every second)
    while True:
        rc, out, err = etcdctl(a.endpoint, "member", "list", "-w", "json")
        assert rc == 0, err
        listed = json.loads(out)["members"]
        if len(listed) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(m["name"] for m in listed) == ["node0", "node1", "node2"]
    assert {m["clientURLs"][0] for m in listed} == {p.endpoint for p in c.procs}
    rc, out, err = etcdctl(a.endpoint, "endpoint", "status", "--cluster", "-w", "json")
    assert rc == 0, err
    statuses = json.loads(out)
    assert len(statuses) == 3 and len({s["Status"]["leader"] for s in statuses}) == 1
    assert len({s["Status"]["header"]["cluster_id"] for s in statuses}) == 1
    dead.kill()
    deadline = time.monotonic() + 15
    while True:
        rc, out, err = etcdctl(b.endpoint, "member", "list", "-w", "json")
        if rc == 0 and len(json.loads(out)["members"]) == 2:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    # a member removed through the API stops serving, as etcd's does
    member_b = next(m for m in json.loads(out)["members"] if m["name"] == "node1")
    rc, out, err = etcdctl(a.endpoint, "member", "remove", f"{member_b['ID']:x}")
    assert rc == 0, err
    deadline = time.monotonic() + 15
    while b.alive():
        assert time.monotonic() < deadline, "the removed member still serves"
        time.sleep(0.2)
    assert "permanently removed" in b.log()
    b.start(wait=False)
    assert b.proc is not None and b.proc.wait(30) != 0  # it refuses to start again under the same ID
    assert "permanently removed" in b.log()
