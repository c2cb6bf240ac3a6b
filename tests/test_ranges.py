"""Large ranges are read in parts with the event loop free in between (core/ranges.py); the answers
are etcd's whatever the size, and other clients are served while one is read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from etcdlite.config import Config
from etcdlite.core import ranges
from etcdlite.core.ranges import EncodedResponse
from etcdlite.core.server import Core
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.storage.memory.backend import MemoryBackend


def _core(tmp_path: Path) -> Core:
    return Core(Config(data_dir=str(tmp_path)), MemoryBackend(None))


def _decoded(resp: pb.RangeResponse | EncodedResponse) -> pb.RangeResponse:
    return resp.message() if isinstance(resp, EncodedResponse) else resp


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_parts_answer_as_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Every combination of limit, keys_only, count_only and order, over live, deleted and rewritten
    keys and an old revision, answers exactly what the one-piece read answers."""
    async def scenario() -> None:
        core = _core(tmp_path)
        for i in range(40):
            await core.put(pb.PutRequest(key=b"k%03d" % i, value=b"v%d" % i), None)
        for i in range(0, 40, 3):
            await core.delete_range(pb.DeleteRangeRequest(key=b"k%03d" % i), None)
        middle = core.backend.visible_revision
        for i in range(0, 40, 5):
            await core.put(pb.PutRequest(key=b"k%03d" % i, value=b"again"), None)
        requests = [pb.RangeRequest(key=b"k", range_end=b"l", limit=limit, keys_only=ko, count_only=co,
                                    revision=rev, sort_order=order)
                    for limit in (0, 1, 5, 26, 27, 100) for ko in (False, True) for co in (False, True)
                    for rev in (0, middle) for order in (pb.RangeRequest.NONE, pb.RangeRequest.ASCEND)]
        requests.append(pb.RangeRequest(key=b"k010", range_end=b"\0"))
        for r in requests:
            monkeypatch.setattr(ranges, "CHUNK_KEYS", chunk)
            parts = _decoded(await core.range(r, None))
            whole = core.kv.range(r)
            core.fill_header(whole.header)
            assert parts == whole, r
    asyncio.run(scenario())


def test_a_compaction_waits_for_a_range_being_read_in_parts(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        monkeypatch.setattr(ranges, "CHUNK_KEYS", 2)
        core = _core(tmp_path)
        for i in range(20):
            await core.put(pb.PutRequest(key=b"k%02d" % i, value=b"v"), None)
        old = core.backend.visible_revision
        for i in range(20):
            await core.put(pb.PutRequest(key=b"k%02d" % i, value=b"w"), None)
        reading = asyncio.ensure_future(core.range(pb.RangeRequest(key=b"k", range_end=b"l", revision=old), None))
        await asyncio.sleep(0)
        compacting = asyncio.ensure_future(core.compact(pb.CompactionRequest(revision=old + 5), None))
        resp = _decoded(await reading)
        assert [kv.value for kv in resp.kvs] == [b"v"] * 20  # the whole read, at its revision
        await compacting
        assert core.backend.compact_revision == old + 5
    asyncio.run(scenario())


def test_other_requests_are_served_while_a_large_range_is_read(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A put that arrives while a range is being read in parts is answered before the read ends
    (before, it waited for the whole read), and the read still answers as of its revision."""
    async def scenario() -> None:
        monkeypatch.setattr(ranges, "CHUNK_KEYS", 10)
        core = _core(tmp_path)
        for i in range(0, 1000, 100):
            await core.txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"big/%04d" % j, value=b"x")) for j in range(i, i + 100)]), None)
        done: list[str] = []

        async def read() -> pb.RangeResponse:
            resp = _decoded(await core.range(pb.RangeRequest(key=b"big/", range_end=b"big0"), None))
            done.append("range")
            return resp

        async def put() -> None:
            await core.put(pb.PutRequest(key=b"big/0500", value=b"new"), None)
            done.append("put")

        reading = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        await put()
        resp = await reading
        assert done == ["put", "range"]
        assert len(resp.kvs) == 1000 and all(kv.value == b"x" for kv in resp.kvs)
        assert resp.header.revision == 11  # the revision it was read at, before the put
    asyncio.run(scenario())


def test_large_reads_take_turns_one_part_per_turn_of_the_loop(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Three large reads at once: between two turns of the event loop at most one part of them is read
    (each read yielding on its own, three parts ran per turn and other clients waited behind all three)."""
    async def scenario() -> None:
        monkeypatch.setattr(ranges, "CHUNK_KEYS", 10)
        core = _core(tmp_path)
        for i in range(0, 300, 100):
            await core.txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"big/%04d" % j, value=b"x")) for j in range(i, i + 100)]), None)
        parts_read = 0
        chunk = core.backend.range_chunk

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal parts_read
            parts_read += 1
            return chunk(*args, **kwargs)
        monkeypatch.setattr(core.backend, "range_chunk", counted)

        loop = asyncio.get_running_loop()
        per_turn: list[int] = []
        last = 0

        def tick() -> None:  # one call per turn of the loop, as a client's callback would get
            nonlocal last
            per_turn.append(parts_read - last)
            last = parts_read
            if not all(r.done() for r in reads):
                loop.call_soon(tick)

        reads = [asyncio.ensure_future(core.range(pb.RangeRequest(key=b"big/", range_end=b"big0"), None))
                 for _ in range(3)]
        loop.call_soon(tick)
        answers = [_decoded(r) for r in await asyncio.gather(*reads)]
        assert all(len(a.kvs) == 300 for a in answers)
        assert parts_read >= 3 * 30
        assert max(per_turn[2:]) <= 1, per_turn  # the first turns start the three reads (a part each)
    asyncio.run(scenario())
