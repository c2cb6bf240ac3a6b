"""Issue 16.8: linearizability of put/get/txn/delete across kill -9 restarts, checked per key by
the project's own checker (``tests/linearizability.py``).

The checker itself is shown to catch planted bugs in fake histories first (a stale read, a lost
acknowledged write, a write applied twice, a write that comes back after a crash...), then
several client threads hammer a handful of keys of a real etcdlite while it is killed at random
moments and restarted; every call and answer is recorded with one clock and the whole history is
checked. ``ETCDLITE_CRASH_ROUNDS`` rounds (5 in ``make test``; ``make crash-test`` runs more).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import grpc
from linearizability import ANY, Op, check, check_key

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as pb_grpc
from harness import EtcdProcess

ROUNDS = int(os.environ.get("ETCDLITE_CRASH_ROUNDS", "5"))
CLIENTS = 6
KEYS = [f"lin/{i}".encode() for i in range(4)]


def op(client: int, kind: str, call: float, ret: float, inp: object = None, out: object = ANY,
       maybe: bool = False, key: bytes = b"x") -> Op:
    return Op(client, kind, key, call, ret, inp, out, maybe)


# -- the checker on fake histories ----------------------------------------------------------------

def test_sequential_history_is_linearizable() -> None:
    h = [op(0, "put", 0, 1, b"1", None), op(0, "get", 2, 3, None, b"1"), op(1, "put", 4, 5, b"2", b"1"),
         op(1, "cas", 6, 7, (b"2", b"3"), (True, None)), op(0, "delete", 8, 9, None, b"3"),
         op(0, "get", 10, 11, None, None)]
    assert check(h).ok


def test_stale_read_is_caught() -> None:
    """The planted bug: a read that returns a value already overwritten before it began."""
    h = [op(0, "put", 0, 1, b"1", None), op(1, "put", 2, 3, b"2", b"1"), op(2, "get", 4, 5, None, b"1")]
    verdict = check(h)
    assert not verdict.ok and verdict.key == b"x"
    assert "not linearizable" in verdict.explain()


def test_concurrent_reads_may_see_either_side_of_a_write() -> None:
    h = [op(0, "put", 0, 1, b"1", None), op(1, "put", 2, 10, b"2", b"1"),
         op(2, "get", 3, 4, None, b"2"), op(3, "get", 5, 6, None, b"2"), op(4, "get", 2.5, 11, None, b"1")]
    assert check(h).ok


def test_new_then_old_read_during_one_write_is_caught() -> None:
    """Once a reader saw the new value, a later reader may not see the old one."""
    h = [op(0, "put", 0, 1, b"1", None), op(1, "put", 2, 10, b"2", b"1"),
         op(2, "get", 3, 4, None, b"2"), op(3, "get", 5, 6, None, b"1")]
    assert not check(h).ok


def test_two_cas_from_one_value_cannot_both_succeed() -> None:
    h = [op(0, "put", 0, 1, b"a", None), op(1, "cas", 2, 5, (b"a", b"b"), (True, None)),
         op(2, "cas", 3, 6, (b"a", b"c"), (True, None))]
    assert not check(h).ok
    h[2] = op(2, "cas", 3, 6, (b"a", b"c"), (False, b"b"))
    assert check(h).ok


def test_lost_acknowledged_write_is_caught() -> None:
    """Acknowledged before the crash, gone after the restart."""
    h = [op(0, "put", 0, 1, b"1", None), op(0, "put", 2, 3, b"2", b"1"),
         op(1, "get", 10, 11, None, b"1")]  # after a restart
    assert not check(h).ok


def test_write_in_flight_at_a_crash_may_or_may_not_have_happened() -> None:
    applied = [op(0, "put", 0, 1, b"1", None), op(1, "put", 2, 5, b"2", maybe=True),
               op(2, "get", 6, 7, None, b"2")]
    lost = applied[:2] + [op(2, "get", 6, 7, None, b"1")]
    assert check(applied).ok and check(lost).ok
    back_from_the_dead = lost + [op(2, "get", 8, 9, None, b"2")]  # unseen after the crash, then seen
    assert not check(back_from_the_dead).ok


def test_maybe_cas_and_delete() -> None:
    h = [op(0, "put", 0, 1, b"1", None), op(1, "cas", 2, 5, (b"1", b"2"), maybe=True),
         op(2, "delete", 3, 6, maybe=True), op(3, "get", 7, 8, None, b"2")]
    assert check(h).ok  # the cas took effect (after the delete did not, or before it)
    h[3] = op(3, "get", 7, 8, None, b"1")
    assert check(h).ok  # neither took effect
    h[3] = op(3, "get", 7, 8, None, b"3")
    assert not check(h).ok  # nobody wrote 3


def test_keys_are_independent_and_initial_states_count() -> None:
    h = [op(0, "get", 0, 1, None, b"old", key=b"a"), op(0, "get", 0, 1, None, None, key=b"b")]
    assert check(h, {b"a": b"old"}).ok
    assert not check(h).ok


def test_many_concurrent_operations_stay_fast() -> None:
    """A register hammered by 8 clients: the cache keeps the search small."""
    rng = random.Random(7)
    h: list[Op] = []
    value: bytes | None = None
    t = 0.0
    for i in range(400):  # a real sequential execution, then each op's interval widened at random
        new = f"v{i}".encode()
        kind = rng.choice(["put", "get", "cas", "delete"])
        if kind == "put":
            o = op(i % 8, "put", t, t, new, value)
            value = new
        elif kind == "get":
            o = op(i % 8, "get", t, t, None, value)
        elif kind == "cas":
            expected = value if rng.random() < 0.5 else b"nope"
            o = op(i % 8, "cas", t, t, (expected, new), (True, None) if value == expected else (False, value))
            value = new if value == expected else value
        else:
            o = op(i % 8, "delete", t, t, None, value)
            value = None
        o.call -= rng.uniform(0, 3)
        o.ret += rng.uniform(0, 3)
        h.append(o)
        t += 1
    start = time.monotonic()
    assert check_key(h).ok
    assert time.monotonic() - start < 20


# -- etcdlite under kill -9 ----------------------------------------------------------------------

class Recorder:
    """One client thread: random single-key operations on KEYS, each recorded with its interval."""

    def __init__(self, cid: int, seed: int, history: list[Op], clock_lock: threading.Lock) -> None:
        self.cid = cid
        self.rng = random.Random(seed)
        self.history = history
        self.lock = clock_lock
        self.n = 0
        self.failure = ""
        self.in_flight: Op | None = None  # the request the kill left without an answer

    def run(self, address: str, killed: threading.Event) -> None:
        with grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as channel:
            kv = pb_grpc.KVStub(channel)
            while True:
                o = self._next()
                try:
                    self._do(kv, o)
                except grpc.RpcError as exc:
                    if not killed.is_set():
                        self.failure = f"{o}: {exc.code().name} {exc.details()}"
                    self.in_flight = o
                    return
                self._record(o)

    def end_round(self, kill_time: float) -> None:
        """Record the unanswered write as one that took effect before the kill, or never (a read
        without an answer changed nothing, and a call after the kill reached no server)."""
        o, self.in_flight = self.in_flight, None
        if o is not None and o.kind != "get" and o.call < kill_time:
            o.maybe, o.output, o.ret = True, ANY, kill_time
            self._record(o)

    def _record(self, o: Op) -> None:
        with self.lock:
            self.history.append(o)

    def _next(self) -> Op:
        self.n += 1
        key = self.rng.choice(KEYS)
        kind = self.rng.choices(["get", "put", "cas", "delete"], [4, 3, 2, 1])[0]
        value = f"c{self.cid}-{self.n}".encode()
        inp: object = value if kind == "put" else None
        if kind == "cas":
            inp = (self.rng.choice([None, *self._recent(key)]), value)
        return Op(self.cid, kind, key, 0.0, 0.0, inp)

    def _recent(self, key: bytes) -> list[bytes]:
        """Values written to ``key`` lately (by anyone), so compare-and-swaps often succeed."""
        with self.lock:
            tail = [o for o in self.history[-40:] if o.key == key and o.kind in ("put", "cas") and not o.maybe]
        return [o.input if o.kind == "put" else o.input[1] for o in tail]

    def _do(self, kv: pb_grpc.KVStub, o: Op) -> None:
        o.call = time.monotonic()
        if o.kind == "get":
            r = kv.Range(pb.RangeRequest(key=o.key), timeout=10)
            o.output = r.kvs[0].value if r.kvs else None
        elif o.kind == "put":
            r = kv.Put(pb.PutRequest(key=o.key, value=o.input, prev_kv=True), timeout=10)
            o.output = r.prev_kv.value if r.HasField("prev_kv") else None
        elif o.kind == "delete":
            r = kv.DeleteRange(pb.DeleteRangeRequest(key=o.key, prev_kv=True), timeout=10)
            o.output = r.prev_kvs[0].value if r.prev_kvs else None
        else:
            expected, new = o.input
            cmp = (pb.Compare(key=o.key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
                   if expected is None else
                   pb.Compare(key=o.key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=expected))
            r = kv.Txn(pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(request_put=pb.PutRequest(
                key=o.key, value=new))], failure=[pb.RequestOp(request_range=pb.RangeRequest(key=o.key))]),
                timeout=10)
            if r.succeeded:
                o.output = (True, None)
            else:
                kvs = r.responses[0].response_range.kvs
                o.output = (False, kvs[0].value if kvs else None)
        o.ret = time.monotonic()


def final_reads(srv: EtcdProcess, history: list[Op]) -> None:
    """After the last restart: one read per key, so the last writes' durability is checked too."""
    kv = srv.stubs().kv
    for key in KEYS:
        o = Op(-1, "get", key, time.monotonic(), 0.0)
        r = kv.Range(pb.RangeRequest(key=key), timeout=10)
        o.output, o.ret = (r.kvs[0].value if r.kvs else None), time.monotonic()
        history.append(o)


def test_linearizable_across_kill_9(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("ETCDLITE_CRASH_SEED", str(time.time_ns())))
    seed = rng.randrange(2**32)
    history: list[Op] = []
    lock = threading.Lock()
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--snapshot-count", "150"])
    try:
        for round_no in range(ROUNDS):
            srv.start()
            killed = threading.Event()
            clients = [Recorder(c, seed * 1000 + round_no * 100 + c, history, lock) for c in range(CLIENTS)]
            threads = [threading.Thread(target=c.run, args=(srv.address, killed), daemon=True,
                                        name=f"client-{c.cid}") for c in clients]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            killed.set()
            srv.kill()
            kill_time = time.monotonic()  # whatever was in flight took effect by now, or never
            for t, c in zip(threads, clients):
                t.join(15)
                assert not t.is_alive(), f"{t.name} hangs"
                assert not c.failure, f"round {round_no}: a request failed before the crash: {c.failure}"
                c.end_round(kill_time)
        srv.start()
        final_reads(srv, history)
        verdict = check(history)
        assert verdict.ok, verdict.explain()
        answered = sum(not o.maybe for o in history)
        assert answered > ROUNDS * 50, f"too few operations answered to mean much ({answered})"
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}\n--- server log tail:\n{srv.log(whole=True)[-3000:]}") from None
    finally:
        srv.stop()
