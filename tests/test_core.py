"""Core in process, over the storage Backend protocol: the request pipeline without gRPC.

Every test takes a ``core`` built on each backend in ``BACKENDS`` (the embedded store in memory
and in a data dir, and PostgreSQL: a fresh database of the session's throw-away server); a new
backend joins by adding its factory there.  What is asserted is
etcd's behaviour as the differential tests pin it down against real etcd; here it is checked
below the wire, where a backend's mistakes show first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from etcdlite import errors
from etcdlite.config import Config
from etcdlite.core.auth.model import Credentials
from etcdlite.core.maintenance import Maintenance
from etcdlite.core.server import Core
from etcdlite.core.watchers import WatchSpec
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.storage.backend import Backend
from etcdlite.storage.etcd.etcddb import EtcdDB
from etcdlite.storage.memory.backend import MemoryBackend
from etcdlite.storage.memory.writer import WALOptions

BackendFactory = Callable[[Path, Config, pytest.FixtureRequest], Backend]


def _postgres(path: Path, config: Config, request: pytest.FixtureRequest) -> Backend:
    from etcdlite.storage.postgres.backend import PostgresBackend
    return PostgresBackend(request.getfixturevalue("pg_cluster").new_database(), config)


BACKENDS: dict[str, BackendFactory] = {
    "memory": lambda _, __, ___: MemoryBackend(None),
    "data-dir": lambda path, _, __: MemoryBackend(str(path), WALOptions(fsync=False)),
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def make_core(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Core]:
    def make(**cfg: object) -> Core:
        config = Config(data_dir=str(tmp_path), **cfg)  # type: ignore[arg-type]
        return Core(config, BACKENDS[request.param](tmp_path, config, request))
    return make


async def running(core: Core) -> Core:
    await core.start()
    return core


async def stop(core: Core) -> None:
    core.close()
    await core.wait_closed()


def run(make_core: Callable[..., Core], scenario: Callable[[Core], object], **cfg: object) -> None:
    async def main() -> None:
        core = await running(make_core(**cfg))
        try:
            await scenario(core)  # type: ignore[misc]
        finally:
            await stop(core)
    asyncio.run(main())


def put(key: bytes, value: bytes = b"v", lease: int = 0, **kw: object) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=value, lease=lease, **kw)  # type: ignore[arg-type]


# -- KV ------------------------------------------------------------------------------------------

def test_puts_get_consecutive_revisions_and_versions(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        revs = [(await core.put(put(b"k"), None)).header.revision for _ in range(3)]
        assert revs == [2, 3, 4]
        kv = (await core.range(pb.RangeRequest(key=b"k"), None)).kvs[0]
        assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 4, 3)
        old = await core.range(pb.RangeRequest(key=b"k", revision=2), None)
        assert old.kvs[0].version == 1 and old.header.revision == 4
        header = old.header
        assert (header.cluster_id, header.member_id, header.raft_term) == (core.cluster_id, core.member_id, 2)
    run(make_core, scenario)


def test_txn_compares_at_the_applied_head_and_answers_both_branches(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        await core.put(put(b"a", b"1"), None)
        cmp = pb.Compare(key=b"a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"1")
        txn = pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(request_put=put(b"b"))],
                            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))])
        first, second = await asyncio.gather(core.txn(txn, None), core.txn(
            pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(request_put=put(b"a", b"2"))]), None))
        assert first.succeeded and first.header.revision == 3
        assert second.succeeded and second.header.revision == 4
        again = await core.txn(txn, None)  # a is 2 now
        assert not again.succeeded and again.responses[0].response_range.kvs[0].value == b"2"
        assert again.header.revision == 4
    run(make_core, scenario)


def test_domain_errors_are_etcds(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        cases = [
            (core.put(pb.PutRequest(), None), errors.EMPTY_KEY),
            (core.put(put(b"k", lease=99), None), errors.LEASE_NOT_FOUND),
            (core.range(pb.RangeRequest(key=b"k", revision=50), None), errors.FUTURE_REV),
            (core.put(put(b"k", b"x" * 2000), None), errors.REQUEST_TOO_LARGE),
            (core.lease_revoke(pb.LeaseRevokeRequest(ID=7), None), errors.LEASE_NOT_FOUND),
        ]
        for call, error in cases:
            with pytest.raises(errors.EtcdError) as raised:
                await call
            assert raised.value is error
        await core.put(put(b"k"), None)
        await core.put(put(b"k"), None)
        await core.compact(pb.CompactionRequest(revision=3), None)
        with pytest.raises(errors.EtcdError) as raised:
            await core.range(pb.RangeRequest(key=b"k", revision=2), None)
        assert raised.value is errors.COMPACTED
        assert raised.value.code is errors.Code.OUT_OF_RANGE
    run(make_core, scenario, max_request_bytes=1024)


def test_a_write_is_visible_only_once_durable(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        backend = core.backend
        seen: list[tuple[int, int]] = []
        backend.add_durable_listener(lambda old, new: seen.append((old, new)))
        pending = asyncio.ensure_future(core.put(put(b"k"), None))
        for _ in range(100_000):  # applied at the backend's turn (at once, or after a shared log's lock)
            if backend.current_revision == 2:
                break
            await asyncio.sleep(0)
        assert backend.current_revision == 2
        reader = (await core.range(pb.RangeRequest(key=b"k"), None))
        assert reader.header.revision == backend.visible_revision
        assert (await pending).header.revision == 2
        assert backend.visible_revision == 2 and seen[-1][1] == 2
    run(make_core, scenario)


# -- leases ----------------------------------------------------------------------------------------

def test_a_revoke_deletes_the_leases_keys_in_one_revision(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        lease = (await core.lease_grant(pb.LeaseGrantRequest(TTL=60), None)).ID
        for key in (b"b", b"a", b"c"):
            await core.put(put(key, lease=lease), None)
        ttl = await core.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=lease, keys=True), None)
        assert list(ttl.keys) == [b"a", b"b", b"c"] and ttl.grantedTTL == 60
        revoked = await core.lease_revoke(pb.LeaseRevokeRequest(ID=lease), None)
        assert revoked.header.revision == 5  # a grant takes no revision; the three puts took 2..4
        changes = list(core.backend.changes_since(5, 5))
        assert [kv.key for kv in changes[0][1]] == [b"a", b"b", b"c"]
        assert (await core.lease_keep_alive(pb.LeaseKeepAliveRequest(ID=lease), None)).TTL == 0
        assert (await core.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=lease), None)).TTL == -1
    run(make_core, scenario)


def test_lease_reads_do_not_see_a_revoke_before_it_is_durable(make_core: Callable[..., Core]) -> None:
    """As etcd's LeaseRenew waits for the applied index: a keep-alive racing a revoke answers only
    once the revoke is durable, and never with a header revision below the revoke's."""
    async def scenario(core: Core) -> None:
        lease = (await core.lease_grant(pb.LeaseGrantRequest(TTL=60), None)).ID
        await core.put(put(b"k", lease=lease), None)
        order: list[str] = []

        async def revoke() -> int:
            resp = await core.lease_revoke(pb.LeaseRevokeRequest(ID=lease), None)
            order.append("revoke")
            return resp.header.revision

        async def keep_alive() -> pb.LeaseKeepAliveResponse:
            resp = await core.lease_keep_alive(pb.LeaseKeepAliveRequest(ID=lease), None)
            order.append("keep-alive")
            return resp

        revoking = asyncio.ensure_future(revoke())
        await asyncio.sleep(0)  # the revoke is applied; whether it is durable is the backend's business
        leases = asyncio.ensure_future(core.lease_leases(pb.LeaseLeasesRequest(), None))
        kept = await keep_alive()
        revision = await revoking
        assert kept.TTL == 0 and kept.header.revision >= revision
        assert order == ["revoke", "keep-alive"]
        assert lease not in [le.ID for le in (await leases).leases]
    run(make_core, scenario)


def test_an_expired_lease_is_revoked_by_the_reaper(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        core.lessor._min_ttl = 1  # a second, not etcd's two
        lease = (await core.lease_grant(pb.LeaseGrantRequest(TTL=1), None)).ID
        await core.put(put(b"k", lease=lease), None)
        for _ in range(60):
            await asyncio.sleep(0.05)
            if not (await core.range(pb.RangeRequest(key=b"k"), None)).kvs:
                break
        assert not (await core.range(pb.RangeRequest(key=b"k"), None)).kvs
        assert (await core.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=lease), None)).TTL == -1
    run(make_core, scenario)


# -- watch -----------------------------------------------------------------------------------------

def test_watchers_get_every_durable_revision_in_order(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        stream = core.watches.new_stream()
        stream.create(WatchSpec(key=b"w", end=b"x"))

        async def events() -> AsyncIterator[tuple[int, bytes, int]]:
            while True:
                resp = await stream.next()
                for kv in resp.events:
                    yield kv.mod_revision, kv.key, kv.version

        await asyncio.gather(*(core.put(put(b"w%d" % (i % 3)), None) for i in range(9)))
        await core.delete_range(pb.DeleteRangeRequest(key=b"w0"), None)
        got = []
        async for event in events():
            got.append(event)
            if len(got) == 10:
                break
        assert [rev for rev, _, _ in got] == list(range(2, 12))
        assert got[-1] == (11, b"w0", 0)
        stream.close()
    run(make_core, scenario)


# -- auth ------------------------------------------------------------------------------------------

def test_auth_decisions_take_plain_credentials(make_core: Callable[..., Core]) -> None:
    async def scenario(core: Core) -> None:
        auth = core.auth
        auth.user_add("root", await auth.hash_password("pw"), False)
        auth.user_grant_role("root", "root")
        auth.enable()
        with pytest.raises(errors.EtcdError) as raised:
            await core.put(put(b"k"), None)
        assert raised.value is errors.USER_EMPTY
        token = await auth.authenticate("root", "pw")
        assert (await core.put(put(b"k"), Credentials(token=token))).header.revision == 2
        with pytest.raises(errors.EtcdError) as raised:
            await core.range(pb.RangeRequest(key=b"k"), Credentials(token=token + "x"))
        assert raised.value is errors.INVALID_AUTH_TOKEN
    run(make_core, scenario, bcrypt_cost=4)


# -- maintenance -----------------------------------------------------------------------------------

def test_snapshot_holds_what_etcds_key_bucket_would(make_core: Callable[..., Core]) -> None:
    """Maintenance.Snapshot's database, read back: the versions etcd's key bucket holds after the same
    writes and compaction (through ``Backend.capture_key_space``), the leases and the revisions."""
    async def scenario(core: Core) -> None:
        lease = (await core.lease_grant(pb.LeaseGrantRequest(ID=0x77, TTL=60), None)).ID  # no revision
        await core.put(put(b"a", b"1"), None)  # 2
        await core.put(put(b"b", b"1"), None)  # 3
        await core.put(put(b"a", b"2"), None)  # 4
        await core.delete_range(pb.DeleteRangeRequest(key=b"b"), None)  # 5
        await core.put(put(b"c", b"1", lease=lease), None)  # 6
        await core.compact(pb.CompactionRequest(revision=6), None)
        await core.put(put(b"a", b"3"), None)  # 7
        await core.delete_range(pb.DeleteRangeRequest(key=b"c"), None)  # 8
        snap = await Maintenance(core).snapshot(None)
        with snap.file as f:
            db = EtcdDB(f.fileno(), snap.size)
            state = db.state()
            versions = [(kv.mod_revision, kv.key, kv.value, kv.version) for kv in db.versions()]
            db.finish_check()
        assert snap.header.revision == state.revision == 8
        assert state.compact_revision == 6
        assert [(le.id, le.ttl) for le in state.leases] == [(lease, 60)]
        # a compaction at 6 keeps each key's newest version at or below 6 unless it is a deletion
        assert versions == [(4, b"a", b"2", 2), (6, b"c", b"1", 1), (7, b"a", b"3", 3), (8, b"c", b"", 0)]
    run(make_core, scenario)
