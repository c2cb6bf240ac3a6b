"""The data dir (issue 4): log encoding, group commit, recovery, snapshots, quota, maintenance RPCs.

In-process tests drive a ``Core`` over a temporary data dir; process tests run etcdlite (and real
etcd where the output is comparable) through ``harness.EtcdProcess`` and real ``etcdctl``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdlite import errors
from etcdlite.app import open_backend
from etcdlite.config import Config, ConfigError
from etcdlite.core.compactor import PeriodicCompactor, RevisionCompactor, parse_retention
from etcdlite.core.server import Core
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.storage.backend import Entry, KeyValue
from etcdlite.storage.memory.backend import MemoryBackend
from etcdlite.storage.memory.files import DiskFaults, StorageError
from etcdlite.storage.memory.mvcc import MVCCStore
from etcdlite.storage.memory.records import (
    SEG_HEAD,
    decode_entry,
    encode_entry,
    encode_record,
    frame_record,
    scan_segment,
)
from etcdlite.storage.memory.snapshot import capture, decode_snapshot, encode_snapshot, restore_state, snapshot_size
from etcdlite.storage.memory.writer import WAL
from harness import ETCD_BIN, EtcdProcess, ServerStartError, etcdctl

# -- helpers -------------------------------------------------------------------------------------


def node_for(data_dir: Path, **cfg: object) -> Core:
    """A core over the embedded backend in ``data_dir``; until it is opened, its writes are durable
    at once in memory (nothing touches the disk)."""
    config = Config(data_dir=str(data_dir), **cfg)  # type: ignore[arg-type]
    return Core(config, open_backend(config))


def store_of(node: Core) -> MVCCStore:
    backend = node.backend
    assert isinstance(backend, MemoryBackend)
    return backend.store


def wal_of(node: Core) -> WAL:
    backend = node.backend
    assert isinstance(backend, MemoryBackend) and backend.wal is not None
    return backend.wal


async def put(node: Core, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
    resp = await node.put(pb.PutRequest(key=key, value=value, lease=lease), None)
    return resp.header.revision


async def delete(node: Core, key: bytes) -> int:
    resp = await node.delete_range(pb.DeleteRangeRequest(key=key), None)
    return resp.header.revision


async def compact(node: Core, revision: int) -> None:
    await node.compact(pb.CompactionRequest(revision=revision), None)


async def grant(node: Core, ttl: int, lease_id: int = 0) -> int:
    resp = await node.lease_grant(pb.LeaseGrantRequest(ID=lease_id, TTL=ttl), None)
    return resp.ID


async def started(node: Core) -> Core:
    await node.start()
    return node


async def stopped(node: Core) -> None:
    node.close()
    await node.wait_closed()


def dump(node: Core) -> dict[str, object]:
    """Everything recovery must bring back, as plain data."""
    store = store_of(node)
    versions = {rev: store.range(b"\0", b"\0", rev).kvs for rev in range(max(store.compact_revision, 1),
                                                                          store.current_revision + 1)}
    return {
        "revision": store.current_revision,
        "compact": store.compact_revision,
        "versions": versions,
        "changes": list(store.changes_since(0, store.current_revision)),
        "leases": sorted((le.id, le.ttl, sorted(le.keys)) for le in node.lessor.leases()),
    }


def wal_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "member" / "wal").glob("*.wal"))


def snap_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "member" / "snap").glob("*.snap"))


async def build_history(node: Core) -> int:
    """Puts, overwrites, deletes, a txn, leases with keys, a revoke and a compaction; returns a lease."""
    for i in range(5):
        await put(node, b"k%d" % i, b"v%d" % i)
    await put(node, b"k1", b"again")
    await delete(node, b"k2")
    await node.txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"t1", value=b"x")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"t2", value=b"y")),
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"k3"))]), None)
    kept = await grant(node, 120)
    gone = await grant(node, 60)
    await put(node, b"leased1", b"l", kept)
    await put(node, b"leased2", b"l", kept)
    await put(node, b"doomed", b"d", gone)
    await compact(node, store_of(node).current_revision - 3)
    await node.lease_revoke(pb.LeaseRevokeRequest(ID=gone), None)
    await put(node, b"k1", b"after-compaction")
    return kept


# -- encoding ------------------------------------------------------------------------------------

_i63 = st.integers(0, 2**63 - 1)
_kvs = st.builds(KeyValue, st.binary(max_size=16), st.binary(max_size=64), _i63, _i63, _i63, _i63)
_entries = st.builds(Entry, revision=_i63, changes=st.lists(_kvs, max_size=4),
                     lease_grants=st.lists(st.tuples(_i63, _i63), max_size=3),
                     lease_revokes=st.lists(_i63, max_size=3), compact_revision=_i63)


@settings(max_examples=200, deadline=None)
@given(_entries)
def test_entry_encoding_round_trips(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**63 - 1), _entries)
def test_record_fast_path_encodes_as_the_general_one(index: int, entry: Entry) -> None:
    assert encode_record(index, entry) == frame_record(index, encode_entry(entry))
    one = Entry(revision=entry.revision, changes=entry.changes[:1], compact_revision=entry.compact_revision)
    assert encode_record(index, one) == frame_record(index, encode_entry(one))


def test_entry_decoding_rejects_truncation() -> None:
    data = encode_entry(Entry(revision=3, changes=[KeyValue(b"k", b"value", 2, 3, 2, 0)]))
    for cut in (1, 5, len(data) - 1):
        with pytest.raises(ValueError):
            decode_entry(data[:cut])


def test_snapshot_of_an_uncompacted_store_takes_every_version_from_the_change_log() -> None:
    """capture() skips the walk over every key until the first compaction: nothing is older than the log."""
    store = MVCCStore()
    for i in range(50):
        txn = store.write_txn()
        txn.put(b"k%02d" % (i % 7), b"v%d" % i, 0)
        if i % 5 == 0:
            txn.put(b"x%02d" % i, b"", 0)
        txn.end()
        if i % 9 == 0:
            txn = store.write_txn()
            txn.delete_range(b"k", b"l")
            txn.end()
    groups = capture(1, store).groups
    assert sorted((kv.mod_revision, kv.key, kv.version) for _, kvs in groups for kv in kvs) == \
        sorted((kv.mod_revision, kv.key, kv.version) for kv in store.history())
    assert [rev for rev, _ in groups] == sorted(rev for rev, _ in groups)


def test_snapshot_restores_the_store_exactly() -> None:
    async def scenario() -> None:
        node = node_for(Path("/nonexistent"))  # the in-memory journal: nothing touches the disk
        await build_history(node)
        state = capture(7, store_of(node))
        data = encode_snapshot(state)
        assert len(data) % 512 == 0 and len(data) == snapshot_size(store_of(node))
        copy = node_for(Path("/nonexistent"))
        decoded = decode_snapshot(data)
        assert decoded.index == 7
        restore_state(decoded, store_of(copy))
        copy.restore_leases()
        assert dump(copy) == dump(node)
        assert store_of(copy).compact_revision > 0 and copy.lessor.leases()

    asyncio.run(scenario())


def test_snapshot_decoding_rejects_damage() -> None:
    data = bytearray(encode_snapshot(capture(1, store_of(node_for(Path("/x"))))))
    data[40] ^= 1
    with pytest.raises(ValueError, match="crc mismatch"):
        decode_snapshot(bytes(data))
    with pytest.raises(ValueError, match="bad magic"):
        decode_snapshot(b"x" * 512)


# -- the journal in process ------------------------------------------------------------------------


def test_restart_recovers_everything(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await started(node_for(tmp_path))
        await build_history(node)
        before = dump(node)
        await stopped(node)
        again = await started(node_for(tmp_path))
        assert dump(again) == before
        assert store_of(again).visible_revision == before["revision"]
        await put(again, b"k9")  # and it keeps going from there
        assert store_of(again).current_revision == before["revision"] + 1
        await stopped(again)

    asyncio.run(scenario())


def test_group_commit_writes_concurrent_requests_together(tmp_path: Path) -> None:
    async def scenario(limit: int) -> tuple[int, int]:
        node = await started(node_for(tmp_path / str(limit), backend_batch_limit=limit))
        revs = await asyncio.gather(*(put(node, b"k%d" % i) for i in range(200)))
        assert sorted(revs) == list(range(2, 202))
        stats = wal_of(node).stats
        await stopped(node)
        return stats.writes, stats.entries

    writes, entries = asyncio.run(scenario(0))
    assert entries == 200 and writes <= 5
    writes, entries = asyncio.run(scenario(1))  # fsync per request
    assert entries == 200 and writes == 200


def test_close_flushes_queued_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await started(node_for(tmp_path))
        for i in range(50):
            request = pb.PutRequest(key=b"k%d" % i, value=b"v")
            node.backend.write_nowait(lambda txn, r=request: node.kv.put(txn, r))
        last = store_of(node).last_seq
        await stopped(node)  # nobody awaited them: close itself must write them
        assert store_of(node)._durable_seq >= last == 50
        again = await started(node_for(tmp_path))
        assert store_of(again).current_revision == 51
        await stopped(again)

    asyncio.run(scenario())


def test_snapshots_rotate_the_log_and_compaction_frees_disk(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await started(node_for(tmp_path, snapshot_count=10))
        for i in range(35):
            await put(node, b"key", b"x" * 1000 + b"%d" % i)
        wal = wal_of(node)
        assert wal.stats.snapshots == 3
        assert len(wal_files(tmp_path)) == 1 and len(snap_files(tmp_path)) == 1
        grown = wal.disk_size()
        assert grown > 35 * 1000
        await compact(node, store_of(node).current_revision)
        assert wal.disk_size() < 3000 < grown  # the post-compaction snapshot holds one version
        before = dump(node)
        await stopped(node)
        again = await started(node_for(tmp_path, snapshot_count=10))
        assert dump(again) == before
        await stopped(again)

    asyncio.run(scenario())


def _write_some(tmp_path: Path, n: int) -> None:
    async def scenario() -> None:
        node = await started(node_for(tmp_path))
        for i in range(n):
            await put(node, b"k%d" % i, b"v%d" % i)
        await stopped(node)

    asyncio.run(scenario())


def _recovered_revision(tmp_path: Path) -> int:
    async def scenario() -> int:
        node = await started(node_for(tmp_path))
        rev = store_of(node).current_revision
        await stopped(node)
        return rev

    return asyncio.run(scenario())


def _log_end(seg: Path) -> int:
    """Where the segment's records end (the space after them is allocated ahead, zeros)."""
    return scan_segment(seg.read_bytes(), SEG_HEAD.size, int(seg.name.split(".")[0], 16)).valid_size


def test_torn_tail_is_dropped_and_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_some(tmp_path, 10)
    seg = wal_files(tmp_path)[0]
    good = _log_end(seg)
    assert seg.stat().st_size > good and not any(seg.read_bytes()[good:])  # log space allocated ahead
    record = frame_record(11, encode_entry(Entry(revision=12, changes=[KeyValue(b"x", b"y", 12, 12, 1, 0)])))
    with open(seg, "r+b") as f:
        f.seek(good)
        f.write(record[:-3])  # a group-commit write cut short by the crash
    with caplog.at_level(logging.WARNING, logger="etcdlite.wal"):
        assert _recovered_revision(tmp_path) == 11
    assert "dropping a torn record at the end of the wal" in caplog.text
    assert _log_end(seg) == good and not any(seg.read_bytes()[good:])  # the torn bytes are gone

    # a complete last record with a bad checksum is a torn tail too
    data = bytearray(seg.read_bytes())
    data[good - 1] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert _recovered_revision(tmp_path) == 10

    # zeros after the last record are the log's clean end, however many there are
    caplog.clear()
    with open(seg, "ab") as f:
        f.write(bytes(100))
    with caplog.at_level(logging.WARNING, logger="etcdlite.wal"):
        assert _recovered_revision(tmp_path) == 10
    assert "torn" not in caplog.text


def test_corruption_before_the_tail_refuses_to_start(tmp_path: Path) -> None:
    _write_some(tmp_path, 10)
    seg = wal_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[_log_end(seg) // 2] ^= 0x01  # in the middle of the records
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"is corrupt at offset \d+ \(.*\), before the end of the log"):
        _recovered_revision(tmp_path)
    assert seg.read_bytes() == bytes(data)  # nothing was truncated


def test_corrupt_snapshot_refuses_to_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await started(node_for(tmp_path))
        await put(node, b"k")
        await wal_of(node).snapshot()
        await stopped(node)

    asyncio.run(scenario())
    snap = snap_files(tmp_path)[0]
    data = bytearray(snap.read_bytes())
    data[60] ^= 0x01
    snap.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="snapshot .* is corrupt"):
        _recovered_revision(tmp_path)


def test_a_data_dir_is_used_by_one_server_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await started(node_for(tmp_path))
        with pytest.raises(StorageError, match="in use by another etcdlite"):
            node_for(tmp_path).open()
        await stopped(node)

    asyncio.run(scenario())


def test_disk_full_fails_writes_keeps_reads_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DiskFaults.ENV, "2000")

    async def scenario() -> list[int]:
        node = await started(node_for(tmp_path))
        acked: list[int] = []
        with pytest.raises(errors.EtcdError) as failed:
            for i in range(1000):
                acked.append(await put(node, b"k%03d" % i, b"v" * 50))
        assert failed.value.code == errors.Code.UNAVAILABLE
        assert "no space left on device" in failed.value.message
        store = store_of(node)
        durable = store.visible_revision
        assert durable == acked[-1]
        put_z, delete_k = pb.PutRequest(key=b"z"), pb.DeleteRangeRequest(key=b"k000")
        for call in (lambda: node.check_space(),
                     lambda: node.backend.write_nowait(lambda txn: node.kv.put(txn, put_z)),
                     lambda: node.backend.write_nowait(lambda txn: node.kv.delete_range(txn, delete_k))):
            with pytest.raises(errors.EtcdError, match="storage failure"):
                call()
        # a read-only txn must not wait for writes that will never be durable
        read_only = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k000"))])
        with pytest.raises(errors.EtcdError, match="storage failure"):
            await asyncio.wait_for(node.txn(read_only, None), 2)
        assert store.range(b"k000", None).kvs[0].value == b"v" * 50
        assert store.range(b"k", b"l").revision == durable
        await stopped(node)
        return acked

    acked = asyncio.run(scenario())
    monkeypatch.delenv(DiskFaults.ENV)
    assert _recovered_revision(tmp_path) >= acked[-1]


# -- auto-compaction ---------------------------------------------------------------------------------


def test_compaction_retention_parses_as_etcd() -> None:
    assert parse_retention("periodic", "1") == 3600
    assert parse_retention("periodic", "90m") == 5400
    assert parse_retention("periodic", "1.5s") == 1.5
    assert parse_retention("revision", "1000") == 1000
    assert parse_retention("periodic", "0") == 0
    with pytest.raises(ConfigError, match='error parsing CompactionRetention: time: invalid duration "1x"'):
        parse_retention("periodic", "1x")
    with pytest.raises(ConfigError, match='unknown auto-compaction-mode "daily"'):
        parse_retention("daily", "1")


def test_periodic_compactor_compacts_to_the_revision_one_period_ago() -> None:
    async def scenario() -> list[int]:
        rev = [1]
        done: list[int] = []

        def revision() -> int:
            rev[0] += 10
            return rev[0]

        async def compact_to(r: int) -> None:
            done.append(r)

        c = PeriodicCompactor(0.5, revision, compact_to)
        c.start()
        await asyncio.sleep(1.3)
        c.close()
        await c.wait_closed()
        return done

    done = asyncio.run(scenario())
    assert done and done[0] == 11  # the first sample, taken one period before the first compaction
    assert done == sorted(done) and len(done) >= 2


def test_revision_compactor_keeps_retention_revisions() -> None:
    async def scenario() -> list[int]:
        done: list[int] = []

        async def compact_to(r: int) -> None:
            if done and r == done[-1]:
                raise errors.COMPACTED
            done.append(r)

        c = RevisionCompactor(10, lambda: 100, compact_to, interval=0.02)
        c.start()
        await asyncio.sleep(0.2)
        c.close()
        await c.wait_closed()
        return done

    assert asyncio.run(scenario()) == [90]


# -- processes: etcdlite and real etcd -------------------------------------------------------------

needs_etcd = pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")


def _ctl(srv: EtcdProcess, *args: str) -> str:
    rc, out, err = etcdctl(srv.endpoint, *args)
    assert rc == 0, f"etcdctl {' '.join(args)}: {err}"
    return out


def _status(srv: EtcdProcess) -> dict:
    return json.loads(_ctl(srv, "endpoint", "status", "-w", "json"))[0]["Status"]


def test_restart_keeps_keys_revisions_leases_and_resets_lease_ttl(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    try:
        c = srv.client()
        lease = c.grant(30)["ID"]
        c.put("a", "1")
        c.put("a", "2")
        c.put("b", "x", lease=lease)
        c.put("c", "gone")
        c.delete("c")
        c.compact(3)
        before = c.range("\0", "\0")
        time.sleep(2.2)
        assert int(c.ttl(lease)["TTL"]) <= 28
        for stop in (srv.stop, srv.kill):  # a clean stop, then a crash
            stop()
            srv.start()
            aliases, c = c.aliases, srv.client()
            c.aliases = aliases  # lease IDs compare as before
            assert c.range("\0", "\0") == before
            assert c.range("a", revision=2) == ("OUT_OF_RANGE", errors.COMPACTED.message)
            ttl = c.ttl(lease, keys=True)
            assert ttl["grantedTTL"] == 30 and int(ttl["TTL"]) >= 29  # the full TTL again, as etcd
            assert ttl["keys"] == [b"b"]
        c.revoke(lease)
        assert c.get("b") == []
    finally:
        srv.stop()


def test_sigterm_flushes_and_exits_quickly(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    c = srv.client()
    for i in range(20):
        c.put(f"k{i}", "v")
    t0 = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - t0 < 3
    assert "stopped serving" in srv.log()
    srv.start()
    try:
        assert srv.client().range("k", "l")["count"] == 20
    finally:
        srv.stop()


def test_torn_tail_of_a_killed_server_is_dropped(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    try:
        srv.client().put("k", "v")
        srv.kill()
        seg = wal_files(tmp_path / "data")[0]
        with open(seg, "ab") as f:
            f.write(b"\x40\x00\x00\x00garbage")
        srv.start()
        assert srv.client().get("k")[0]["value"] == b"v"
        assert "dropping a torn record at the end of the wal" in srv.log()
    finally:
        srv.stop()


def test_mid_log_corruption_stops_startup_with_one_line(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    c = srv.client()
    for i in range(20):
        c.put(f"k{i}", "v" * 20)
    srv.kill()
    seg = wal_files(tmp_path / "data")[0]
    data = bytearray(seg.read_bytes())
    data[_log_end(seg) // 2] ^= 0x10  # in the middle of the records
    seg.write_bytes(bytes(data))
    with pytest.raises(ServerStartError, match="exited with 1"):
        srv.start()
    lines = [ln for ln in srv.log().splitlines() if ln.startswith("etcdlite: ")]
    assert len(lines) == 1 and re.search(r"wal segment .* is corrupt at offset \d+ .*refusing to start", lines[0])


def _fill_until_nospace(srv: EtcdProcess, value: str, limit: int = 200) -> int:
    for i in range(limit):
        rc, _, err = etcdctl(srv.endpoint, "put", "k", value)
        if rc != 0:
            assert "Error: etcdserver: mvcc: database space exceeded" in err
            return i
    raise AssertionError("the quota was never reached")


def test_quota_alarm_compact_defrag_disarm(target: str, server_factory) -> None:
    """etcd's documented recovery from NOSPACE, with etcdctl, on both servers."""
    srv = server_factory(target, args=["--quota-backend-bytes", "250000"])
    value = "x" * 20000
    assert _fill_until_nospace(srv, value) > 3
    member = int(_status(srv)["leader"])
    assert _ctl(srv, "alarm", "list") == f"memberID:{member} alarm:NOSPACE \n"
    assert _status(srv)["errors"] == [f"memberID:{member} alarm:NOSPACE "]
    for args in (("put", "other", "v"), ("lease", "grant", "10")):
        rc, _, err = etcdctl(srv.endpoint, *args)
        assert rc != 0 and "etcdserver: mvcc: database space exceeded" in err
    assert json.loads(_ctl(srv, "get", "k", "-w", "json"))["kvs"][0]["version"] > 3  # reads still work
    _ctl(srv, "del", "k")  # deletes too
    revision = _status(srv)["header"]["revision"]
    assert _ctl(srv, "compact", str(revision)) == f"compacted revision {revision}\n"
    assert "Finished defragmenting etcd member" in _ctl(srv, "defrag")
    assert _status(srv)["dbSize"] < 250000
    assert _ctl(srv, "alarm", "disarm") == f"memberID:{member} alarm:NOSPACE \n"
    assert _ctl(srv, "alarm", "list") == ""
    assert _ctl(srv, "put", "k", "works") == "OK\n"


def test_alarm_rpc(target: str, server_factory) -> None:
    srv = server_factory(target)
    m = srv.stubs().maintenance
    A = pb.AlarmRequest

    def alarms(resp: pb.AlarmResponse) -> list[tuple[int, int]]:
        return sorted((a.memberID, a.alarm) for a in resp.alarms)

    assert alarms(m.Alarm(A(action=A.ACTIVATE, memberID=5, alarm=pb.NOSPACE))) == [(5, pb.NOSPACE)]
    assert alarms(m.Alarm(A(action=A.ACTIVATE, memberID=5, alarm=pb.NONE))) == []
    assert alarms(m.Alarm(A(action=A.GET))) == [(5, pb.NOSPACE)]
    assert alarms(m.Alarm(A(action=A.GET, alarm=pb.CORRUPT))) == []
    rc, _, err = etcdctl(srv.endpoint, "put", "k", "v")
    assert rc != 0 and "database space exceeded" in err  # NOSPACE from any member caps the server
    assert alarms(m.Alarm(A(action=A.DEACTIVATE, memberID=5, alarm=pb.NOSPACE))) == [(5, pb.NOSPACE)]
    assert alarms(m.Alarm(A(action=A.DEACTIVATE, memberID=5, alarm=pb.NOSPACE))) == []
    assert _ctl(srv, "put", "k", "v") == "OK\n"


@needs_etcd
def test_endpoint_status_matches_etcds_fields(tmp_path: Path) -> None:
    statuses = {}
    for target in ("etcd", "etcdlite"):
        srv = EtcdProcess(target, tmp_path / f"{target}.data").start()
        try:
            _ctl(srv, "put", "k", "v")
            statuses[target] = _status(srv)
        finally:
            srv.stop()
    etcd, ours = statuses["etcd"], statuses["etcdlite"]
    assert set(ours) == set(etcd)
    assert ours["header"]["revision"] == etcd["header"]["revision"] == 2
    assert ours["leader"] == ours["header"]["member_id"] and etcd["leader"] == etcd["header"]["member_id"]
    assert ours["raftTerm"] == etcd["raftTerm"] == 2
    assert ours["version"] == etcd["version"] == "3.5.1"
    assert 0 < ours["dbSizeInUse"] <= ours["dbSize"]
    assert ours["raftIndex"] == ours["raftAppliedIndex"] == etcd["raftIndex"] == etcd["raftAppliedIndex"] == 5


def test_snapshot_save_and_restore(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data").start()
    try:
        c = srv.client()
        lease = c.grant(100)["ID"]
        c.put("a", "1")
        c.put("a", "2")
        c.put("l", "x", lease=lease)
        c.compact(2)
        before = c.range("\0", "\0")
        saved = tmp_path / "snap.db"
        out = _ctl(srv, "snapshot", "save", str(saved))
        assert out == f"Snapshot saved at {saved}\n"
        assert saved.stat().st_size % 512 == 32  # content in whole pages, then etcd's sha256
        c.put("a", "after the snapshot")
    finally:
        srv.stop()
    restored = tmp_path / "restored"
    cmd = [sys.executable, "-m", "etcdlite", "snapshot", "restore", str(saved), "--data-dir", str(restored)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "restored snapshot" in p.stdout
    again = EtcdProcess("etcdlite", restored).start()
    try:
        aliases, c = c.aliases, again.client()
        c.aliases = aliases
        assert c.range("\0", "\0") == before
        assert c.ttl(lease, keys=True)["keys"] == [b"l"]
    finally:
        again.stop()
    # the restore refuses a damaged file and a used data dir, as etcdutl does
    damaged = tmp_path / "damaged.db"
    data = bytearray(saved.read_bytes())
    data[100] ^= 1
    damaged.write_bytes(bytes(data))
    p = subprocess.run(cmd[:5] + [str(damaged), "--data-dir", str(tmp_path / "r2")], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("Error: expected sha256 ")
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 1 and "not empty" in p.stderr


def test_disk_full_answers_unavailable_and_the_server_stays_up(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", env={DiskFaults.ENV: "3000"}).start()
    try:
        c = srv.client()
        acked = {}
        for i in range(200):
            r = c.put(f"k{i:03d}", "v" * 40)
            if "header" not in r:
                assert r[0] == "UNAVAILABLE" and "storage failure (no space left on device)" in r[1], r
                break
            acked[f"k{i:03d}".encode()] = r["header"]["revision"]
        else:
            raise AssertionError("the disk never filled")
        assert srv.alive()
        assert c.put("more", "v")[0] == "UNAVAILABLE"
        assert c.get("k000")[0]["value"] == b"v" * 40  # reads serve the durable state
        status = _status(srv)
        assert any("storage failure" in e for e in status["errors"])
        srv.stop()
        srv.env = None
        srv.start()
        got = {kv["key"]: kv["mod_revision"] for kv in srv.client().range("k", "l")["kvs"]}
        assert all(got.get(k) == rev for k, rev in acked.items())
    finally:
        srv.stop()


def test_auto_compaction_periodic(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data",
                      args=["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s"]).start()
    try:
        c = srv.client()
        c.put("k", "1")
        c.put("k", "2")
        deadline = time.monotonic() + 5
        while c.range("k", revision=2) != ("OUT_OF_RANGE", errors.COMPACTED.message):
            assert time.monotonic() < deadline, "no auto compaction happened"
            c.put("k", "again")
            time.sleep(0.2)
        assert "completed auto periodic compaction" in srv.log()
    finally:
        srv.stop()


def test_bad_auto_compaction_flags_are_refused(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--auto-compaction-retention", "soon"])
    with pytest.raises(ServerStartError):
        srv.start()
    assert 'etcdlite: error parsing CompactionRetention: time: invalid duration "soon"' in srv.log()
