"""Several instances over one PostgreSQL database, in process: one etcd across all of them.

Each ``Core`` here is one etcdlite instance (its own member ID, connections and in-memory replica);
they share a fresh database of the session's throw-away server (tests/pgcluster.py).  What is
asserted is etcd's behaviour across members: one gap-free revision, reads that see every
acknowledged write, watchers everywhere seeing the same events, shared leases, auth and members,
and a state that hashes as the embedded store's after the same operations.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from etcdlite import errors
from etcdlite.config import Config
from etcdlite.core.server import Core
from etcdlite.core.watch import WatchSpec
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.storage.memory.backend import MemoryBackend

psycopg = pytest.importorskip("psycopg")

from etcdlite.storage.postgres import applier as applier_module  # noqa: E402
from etcdlite.storage.postgres.backend import PostgresBackend  # noqa: E402

POLL_SECONDS_BEFORE = applier_module.POLL_SECONDS + 0.1


def instance_config(tmp: Path, n: int, **cfg: Any) -> Config:
    peer = f"http://127.0.0.1:{23800 + n}"  # only hashed into the member ID: nothing listens there
    return Config(name=f"node{n}", data_dir=str(tmp / f"node{n}"), initial_advertise_peer_urls=[peer],
                  advertise_client_urls=[f"http://127.0.0.1:{23790 + n}"], **cfg)


async def start_instances(url: str, tmp: Path, count: int, **cfg: Any) -> list[Core]:
    cores = []
    for n in range(count):
        config = instance_config(tmp, n, **cfg)
        core = Core(config, PostgresBackend(url, config))
        await core.start()
        cores.append(core)
    return cores


async def stop_all(cores: list[Core]) -> None:
    for core in cores:
        core.close()
    for core in cores:
        await core.wait_closed()


def run_instances(pg_cluster: Any, tmp: Path, count: int, scenario: Callable[[list[Core]], Awaitable[None]],
                  **cfg: Any) -> None:
    url = pg_cluster.new_database()

    async def main() -> None:
        cores = await start_instances(url, tmp, count, **cfg)
        try:
            await scenario(cores)
        finally:
            await stop_all(cores)
    asyncio.run(main())


def put(key: bytes, value: bytes = b"v", lease: int = 0, **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=value, lease=lease, **kw)


async def get(core: Core, key: bytes, serializable: bool = False) -> pb.RangeResponse:
    return await core.range(pb.RangeRequest(key=key, serializable=serializable), None)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- one revision, every write atomic with its compares ------------------------------------------------

def test_writes_through_every_instance_share_one_gap_free_revision(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        async def writer(i: int) -> list[int]:
            revs = []
            for j in range(40):
                core = cores[(i + j) % len(cores)]
                revs.append((await core.put(put(b"k%d" % (j % 5), b"%d-%d" % (i, j)), None)).header.revision)
            return revs

        got = await asyncio.gather(*(writer(i) for i in range(6)))
        revisions = sorted(r for revs in got for r in revs)
        assert revisions == list(range(2, 2 + 240))  # every put its own revision, none twice, no gap
        for core in cores:
            head = (await get(core, b"k0")).header.revision
            assert head == 241
    run_instances(pg_cluster, tmp_path, 3, scenario)


def test_a_txn_compare_sees_the_global_head(pg_cluster: Any, tmp_path: Path) -> None:
    """A counter incremented by compare-and-swap through three instances loses no increment."""
    async def scenario(cores: list[Core]) -> None:
        await cores[0].put(put(b"n", b"0"), None)

        async def incrementer(core: Core, times: int) -> int:
            done = retries = 0
            while done < times:
                # a serializable read may lag (the compare then fails), a linearizable one may not
                found = (await get(core, b"n", serializable=bool(retries % 2))).kvs or (await get(core, b"n")).kvs
                cur = found[0]
                cmp = pb.Compare(key=b"n", target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                 mod_revision=cur.mod_revision)
                txn = pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(
                    request_put=put(b"n", b"%d" % (int(cur.value) + 1)))])
                if (await core.txn(txn, None)).succeeded:
                    done += 1
                else:
                    retries += 1
            return retries

        retries = await asyncio.gather(*(incrementer(core, 15) for core in cores))
        final = (await get(cores[2], b"n")).kvs[0]
        assert final.value == b"45" and final.version == 46
        assert sum(retries) > 0  # they did race
    run_instances(pg_cluster, tmp_path, 3, scenario)


def test_a_linearizable_read_anywhere_sees_every_acknowledged_write(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        last_serializable = 0
        for i in range(60):
            writer, reader = random.sample(cores, 2)
            rev = (await writer.put(put(b"r", b"%d" % i), None)).header.revision
            resp = await get(reader, b"r")
            assert resp.kvs[0].value == b"%d" % i and resp.header.revision >= rev
            ser = await get(random.choice(cores), b"r", serializable=True)
            assert ser.header.revision >= 1
            # a serializable read may lag, never go back (on one instance)
            head = (await get(cores[0], b"r", serializable=True)).header.revision
            assert head >= last_serializable
            last_serializable = head
    run_instances(pg_cluster, tmp_path, 3, scenario)


def test_errors_are_decided_at_the_global_head(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        a, b = cores
        await a.put(put(b"x"), None)
        await a.put(put(b"x"), None)
        await b.compact(pb.CompactionRequest(revision=3), None)
        with pytest.raises(errors.EtcdError) as raised:
            await a.range(pb.RangeRequest(key=b"x", revision=2), None)
        assert raised.value is errors.COMPACTED
        with pytest.raises(errors.EtcdError) as raised:
            await a.compact(pb.CompactionRequest(revision=3), None)
        assert raised.value is errors.COMPACTED
        with pytest.raises(errors.EtcdError) as raised:
            await b.compact(pb.CompactionRequest(revision=99), None)
        assert raised.value is errors.FUTURE_REV
    run_instances(pg_cluster, tmp_path, 2, scenario)


def test_a_commit_whose_connection_dies_is_reconciled(pg_cluster: Any, tmp_path: Path) -> None:
    """The writer's database connection is killed again and again while writes are in flight: each
    write is acknowledged only if committed, refused with etcd's UNAVAILABLE errors otherwise ("no
    leader": certainly not committed), and the instances end with one state."""
    url = pg_cluster.new_database()

    async def scenario(cores: list[Core]) -> None:
        a, b = cores
        acked: list[bytes] = []
        refused: list[bytes] = []
        unknown: list[bytes] = []

        async def writer(w: int) -> None:
            for i in range(60):
                key = b"c/%d/%d" % (w, i)
                try:
                    await a.put(put(key), None)
                    acked.append(key)
                except errors.EtcdError as exc:
                    assert exc in (errors.NO_LEADER, errors.TIMEOUT), exc
                    (refused if exc is errors.NO_LEADER else unknown).append(key)
                    await asyncio.sleep(0.05)

        async def killer() -> int:
            kills = 0
            for _ in range(25):
                await asyncio.sleep(random.uniform(0.01, 0.08))
                out = await asyncio.to_thread(pg_cluster.psql, "SELECT count(pg_terminate_backend(pid)) FROM "
                                              "pg_stat_activity WHERE application_name = 'etcdlite node0 log writer'",
                                              url.rsplit("/", 1)[1])
                kills += int(out or 0)
            return kills

        *_, kills = await asyncio.gather(*(writer(w) for w in range(3)), killer())
        assert kills > 0 and acked
        await b.put(put(b"end"), None)
        for core in cores:
            found = {kv.key for kv in (await core.range(pb.RangeRequest(key=b"c/", range_end=b"c0"), None)).kvs}
            assert set(acked) <= found  # every acknowledged write is there
            assert not set(refused) & found  # "no leader": it was not committed
        head = (await get(a, b"end")).header.revision
        assert a.backend.hash_kv(head) == b.backend.hash_kv(head)
        assert [rev for rev, _ in b.backend.changes_since(2, head)] == list(range(2, head + 1))

    async def main() -> None:
        cores = await start_instances(url, tmp_path, 2)
        try:
            await scenario(cores)
        finally:
            await stop_all(cores)
    asyncio.run(main())


def test_a_commit_whose_answer_was_lost_is_found_committed(pg_cluster: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """COMMIT succeeded but its answer never arrived: the writer looks for its batch in the log once
    reconnected, finds it, and is answered with success (not an error for a write that happened)."""
    original = psycopg.AsyncPipeline.__aexit__
    armed = {"on": False}

    async def losing_exit(self: Any, *exc: Any) -> None:
        await original(self, *exc)  # the commit's round trip: the COMMIT went through
        if armed["on"] and exc[0] is None:
            armed["on"] = False
            raise psycopg.OperationalError("the answer was lost")

    async def scenario(cores: list[Core]) -> None:
        a, b = cores
        await a.put(put(b"before"), None)
        monkeypatch.setattr(psycopg.AsyncPipeline, "__aexit__", losing_exit)
        armed["on"] = True
        resp = await a.put(put(b"lost", b"answer"), None)
        assert armed["on"] is False  # the answer was lost indeed
        assert resp.header.revision == 3
        assert (await get(b, b"lost")).kvs[0].value == b"answer"
        assert (await get(a, b"lost")).kvs[0].mod_revision == 3
    run_instances(pg_cluster, tmp_path, 2, scenario)


# -- watch -------------------------------------------------------------------------------------------------

def test_watchers_on_every_instance_see_the_same_events_with_prev_kv(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        streams = []
        for core in cores:
            stream = core.watches.new_stream()
            stream.create(WatchSpec(key=b"w", end=b"x", prev_kv=True))
            streams.append(stream)

        async def collect(core: Core, stream: Any, until: int) -> list[tuple[int, int, bytes, bytes, bytes]]:
            seen: list[tuple[int, int, bytes, bytes, bytes]] = []
            while not seen or seen[-1][0] < until:
                resp = await asyncio.wait_for(stream.next(), 10)
                for kv in resp.events:  # what the api turns into events, prev_kv read as it reads it
                    prev = core.prev_kv(kv)
                    seen.append((kv.mod_revision, kv.version, kv.key, kv.value, b"-" if prev is None else prev.value))
            return seen

        async def writes(core: Core, i: int) -> None:
            for j in range(20):
                if j % 7 == 6:
                    await core.delete_range(pb.DeleteRangeRequest(key=b"w%d" % (j % 3)), None)
                else:
                    await core.put(put(b"w%d" % (j % 3), b"%d.%d" % (i, j)), None)

        await asyncio.gather(*(writes(core, i) for i, core in enumerate(cores)))
        head = (await get(cores[0], b"w0")).header.revision
        got = await asyncio.gather(*(collect(core, s, head) for core, s in zip(cores, streams)))
        assert got[0] == got[1] == got[2]
        revisions = [ev[0] for ev in got[0]]
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)  # in order, exactly once
        assert revisions == list(range(2, head + 1))  # only watched keys were written: every revision
        for stream in streams:
            stream.close()
    run_instances(pg_cluster, tmp_path, 3, scenario)


# -- leases --------------------------------------------------------------------------------------------------

def test_leases_are_shared_kept_alive_anywhere_and_reaped_once(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        a, b, c = cores
        lease = (await a.lease_grant(pb.LeaseGrantRequest(TTL=2), None)).ID
        await b.put(put(b"l", lease=lease), None)  # b sees the grant (its put checks the lease exists)
        for core in cores:
            await core.range(pb.RangeRequest(key=b"l"), None)  # caught up
            ttl = await core.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=lease, keys=True), None)
            assert ttl.grantedTTL == 2 and list(ttl.keys) == [b"l"]
        clock = asyncio.get_running_loop().time
        for _ in range(8):  # 4 s of keep-alives through c alone: the lease outlives its TTL twice
            await asyncio.sleep(0.5)
            sent = clock()
            assert (await c.lease_keep_alive(pb.LeaseKeepAliveRequest(ID=lease), None)).TTL == 2
            renewed = clock()  # the last renewal happened between sent and renewed
        assert (await get(a, b"l")).kvs

        async def gone() -> bool:
            return not (await get(b, b"l")).kvs
        await eventually(gone)
        revoked = clock()
        # not before its expiry, and within 0.5 s after it (plus this loop's 20 ms polls)
        assert sent + 2.0 - 0.05 <= revoked < renewed + 2.0 + 0.5 + 0.1
        revisions = {(await get(core, b"l")).header.revision for core in cores}
        assert len(revisions) == 1  # one revoke, one revision, seen by all
        for core in cores:
            assert (await core.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=lease), None)).TTL == -1
            assert (await core.lease_keep_alive(pb.LeaseKeepAliveRequest(ID=lease), None)).TTL == 0
    run_instances(pg_cluster, tmp_path, 3, scenario)


def test_a_lease_id_granted_on_one_instance_exists_on_all(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        a, b = cores
        await a.lease_grant(pb.LeaseGrantRequest(ID=77, TTL=60), None)
        with pytest.raises(errors.EtcdError) as raised:
            await b.lease_grant(pb.LeaseGrantRequest(ID=77, TTL=60), None)
        assert raised.value is errors.LEASE_EXIST
        await b.lease_revoke(pb.LeaseRevokeRequest(ID=77), None)
        with pytest.raises(errors.EtcdError) as raised:
            await a.put(put(b"k", lease=77), None)
        assert raised.value is errors.LEASE_NOT_FOUND
    run_instances(pg_cluster, tmp_path, 2, scenario)


def test_a_lease_revoked_and_granted_again_in_one_commit_still_expires(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        a, b = cores
        await a.lease_grant(pb.LeaseGrantRequest(ID=88, TTL=600), None)
        # queued together, committed in one batch: the expiry row must follow the last of them
        await asyncio.gather(a.lease_revoke(pb.LeaseRevokeRequest(ID=88), None),
                             a.lease_grant(pb.LeaseGrantRequest(ID=88, TTL=2), None))
        await a.put(put(b"again", lease=88), None)

        async def gone() -> bool:
            return not (await get(b, b"again")).kvs
        await eventually(gone, timeout=5)
    run_instances(pg_cluster, tmp_path, 2, scenario)


# -- auth, alarms, members ------------------------------------------------------------------------------------

def test_auth_and_alarms_are_shared(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        from etcdlite.core.auth.admin import AuthAdmin
        from etcdlite.core.auth.model import Credentials
        from etcdlite.core.maintenance import Maintenance

        a, b = cores
        admin = AuthAdmin(a)
        await admin.user_add(pb.AuthUserAddRequest(name="root", password="pw"), None)
        await admin.user_grant_role(pb.AuthUserGrantRoleRequest(user="root", role="root"), None)
        await admin.auth_enable(pb.AuthEnableRequest(), None)
        with pytest.raises(errors.EtcdError) as raised:
            await b.range(pb.RangeRequest(key=b"k"), None)  # b applied the change before serving the read
        assert raised.value is errors.USER_EMPTY
        token = await b.auth.authenticate("root", "pw")
        assert (await b.put(put(b"k"), Credentials(token=token))).header.revision == 2
        await Maintenance(b).alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=5,
                                                   alarm=pb.NOSPACE), Credentials(token=token))
        await a.range(pb.RangeRequest(key=b"k"), Credentials(token=await a.auth.authenticate("root", "pw")))
        assert [(m.memberID, m.alarm) for m in a.alarms.get()] == [(5, pb.NOSPACE)]
    run_instances(pg_cluster, tmp_path, 2, scenario, bcrypt_cost=4)


def test_a_write_is_checked_against_auth_changes_committed_elsewhere(pg_cluster: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """As etcd checks permissions when it applies a write: a permission revoked through b refuses a
    write sent to a right after, even before a has heard of the change."""
    async def scenario(cores: list[Core]) -> None:
        from etcdlite.core.auth.admin import AuthAdmin
        from etcdlite.core.auth.model import AUTH_OLD_REVISION, Credentials
        from etcdlite.pb.authpb import auth_pb2

        a, b = cores
        admin = AuthAdmin(b)
        for name in ("root", "u"):
            await admin.user_add(pb.AuthUserAddRequest(name=name, password="pw"), None)
        await admin.user_grant_role(pb.AuthUserGrantRoleRequest(user="root", role="root"), None)
        await admin.role_add(pb.AuthRoleAddRequest(name="r"), None)
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")
        await admin.role_grant_permission(pb.AuthRoleGrantPermissionRequest(name="r", perm=perm), None)
        await admin.user_grant_role(pb.AuthUserGrantRoleRequest(user="u", role="r"), None)
        await admin.auth_enable(pb.AuthEnableRequest(), None)
        user = Credentials(token=(await AuthAdmin(a).authenticate(pb.AuthenticateRequest(name="u", password="pw"),
                                                                  None)).token)
        await a.put(put(b"a1"), user)
        root = Credentials(token=await b.auth.authenticate("root", "pw"))
        # a hears of nothing more until it writes (then it catches up under the log's lock)
        monkeypatch.setattr(applier_module, "POLL_SECONDS", 60.0)
        monkeypatch.setattr(a.backend._applier, "announced", lambda index: None)  # type: ignore[attr-defined]
        await asyncio.sleep(POLL_SECONDS_BEFORE)  # a's applier is back in its (now long) wait
        await admin.role_revoke_permission(pb.AuthRoleRevokePermissionRequest(role="r", key=b"a", range_end=b"b"), root)
        assert a.auth.status()[1] < b.auth.status()[1]  # a has not applied the change yet
        with pytest.raises(errors.EtcdError) as raised:
            await a.put(put(b"a2"), user)
        assert raised.value in (errors.PERMISSION_DENIED, AUTH_OLD_REVISION)
        assert not (await b.range(pb.RangeRequest(key=b"a2"), root)).kvs
    run_instances(pg_cluster, tmp_path, 2, scenario, bcrypt_cost=4)


def test_every_live_instance_is_a_member(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        async def listed() -> bool:
            return all(len(core.membership.members()) == 3 for core in cores)
        await eventually(listed)
        members = cores[0].membership.members()
        assert sorted(m.id for m in members) == sorted(core.member_id for core in cores)
        assert {m.name for m in members} == {"node0", "node1", "node2"}
        assert {m.client_urls[0] for m in members} == {f"http://127.0.0.1:{23790 + n}" for n in range(3)}
        assert len({core.cluster_id for core in cores}) == 1
        removed: list[int] = []
        cores[2].on_removed = lambda: removed.append(cores[2].member_id)
        cores[0].membership.remove(cores[2].member_id)
        await cores[0].backend.wait_applied()

        async def told() -> bool:
            await cores[2].range(pb.RangeRequest(key=b"x"), None)
            return bool(removed)
        await eventually(told)
        assert cores[2].member_id not in [m.id for m in cores[1].membership.members()]
    run_instances(pg_cluster, tmp_path, 3, scenario)


# -- the same state as the embedded store ----------------------------------------------------------------

async def _operations(core: Core) -> None:
    for i in range(30):
        await core.put(put(b"h%d" % (i % 7), b"v%d" % i), None)
    await core.delete_range(pb.DeleteRangeRequest(key=b"h3"), None)
    lease = (await core.lease_grant(pb.LeaseGrantRequest(ID=9, TTL=100), None)).ID
    await core.put(put(b"leased", lease=lease), None)
    cmp = pb.Compare(key=b"h1", target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=1)
    await core.txn(pb.TxnRequest(compare=[cmp], success=[
        pb.RequestOp(request_put=put(b"t1")), pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"h2")),
        pb.RequestOp(request_txn=pb.TxnRequest(success=[pb.RequestOp(request_put=put(b"t2"))]))]), None)
    await core.compact(pb.CompactionRequest(revision=20), None)
    await core.lease_revoke(pb.LeaseRevokeRequest(ID=lease), None)
    await core.put(put(b"after"), None)


def test_hash_kv_equals_the_embedded_stores_after_the_same_operations(pg_cluster: Any, tmp_path: Path) -> None:
    async def embedded() -> list[tuple[int, int]]:
        config = Config(data_dir=str(tmp_path / "embedded"))
        core = Core(config, MemoryBackend(str(tmp_path / "embedded")))
        await core.start()
        try:
            await _operations(core)
            return [core.backend.hash_kv(rev) for rev in (0, 25, 30)]
        finally:
            core.close()
            await core.wait_closed()

    expected = asyncio.run(embedded())

    async def scenario(cores: list[Core]) -> None:
        await _operations(cores[0])
        for core in cores:
            await core.range(pb.RangeRequest(key=b"after"), None)  # caught up
            assert [core.backend.hash_kv(rev) for rev in (0, 25, 30)] == expected
        restarted = cores[1]  # a new instance loads the same state from the database
        config = instance_config(tmp_path, 5)
        fresh = Core(config, PostgresBackend(restarted.backend._url, config))  # type: ignore[attr-defined]
        await fresh.start()
        try:
            assert [fresh.backend.hash_kv(rev) for rev in (0, 25, 30)] == expected
        finally:
            await stop_all([fresh])
    run_instances(pg_cluster, tmp_path, 2, scenario)


def test_a_snapshot_truncates_the_log_and_a_late_instance_reloads_it(pg_cluster: Any, tmp_path: Path) -> None:
    async def scenario(cores: list[Core]) -> None:
        a, b = cores
        for i in range(50):
            await a.put(put(b"s%d" % (i % 10), b"%d" % i), None)
        await b.range(pb.RangeRequest(key=b"s0"), None)
        expected = a.backend.hash_kv(0)
        await a.backend.defragment()  # a snapshot; the log up to it is deleted
        url = a.backend._url  # type: ignore[attr-defined]
        config = instance_config(tmp_path, 7)
        late = Core(config, PostgresBackend(url, config))
        await late.start()
        try:
            assert late.backend.hash_kv(0) == expected
            await a.put(put(b"more"), None)
            assert (await get(late, b"more")).kvs
            assert (await get(b, b"more")).kvs
        finally:
            await stop_all([late])
    run_instances(pg_cluster, tmp_path, 2, scenario, snapshot_count=1_000_000)
