"""bbolt's page format: what the writer writes, the reader reads back, and what it refuses.

The differential tests (test_snapshot_bbolt.py) show real bbolt (etcdutl, etcd) reading the writer's
files and the reader reading real etcd's; these pin the format's corners.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from etcdlite.storage.etcd.bbolt import (
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    LEAF_PAGE,
    META,
    PAGE_HEADER,
    PAGE_SIZE,
    BoltError,
    BoltReader,
    BoltWriter,
    fnv64a,
)


def build(path: Path, buckets: dict[bytes, list[tuple[bytes, bytes]]], nested: bool = False) -> Path:
    with open(path, "w+b") as f:
        f.seek(2 * PAGE_SIZE)
        w = BoltWriter(f)
        values = {name: w.bucket((k, v, 0) for k, v in items) for name, items in buckets.items()}
        if nested:  # a bucket holding a bucket and a plain value
            inner = w.bucket([(b"x", b"1", 0)])
            values[b"outer"] = w.bucket([(b"a-plain", b"v", 0), (b"inner", inner, BUCKET_LEAF_FLAG)])
        meta = w.finish((name, values[name], BUCKET_LEAF_FLAG) for name in sorted(values))
        f.seek(0)
        f.write(meta)
    return path


def read_all(path: Path) -> dict[bytes, object]:
    fd = os.open(path, os.O_RDONLY)
    try:
        r = BoltReader(fd, os.fstat(fd).st_size)

        def walk(items):  # noqa: ANN001, ANN202
            return {k: walk(r.items(v)) if f & BUCKET_LEAF_FLAG else v for k, v, f in items}

        out = walk(r.root_items())
        r.finish_check()
        return out
    finally:
        os.close(fd)


def test_round_trip_inline_paged_overflowing_and_nested(tmp_path: Path) -> None:
    many = [(b"k%07d" % i, b"v" * (i % 50)) for i in range(30_000)]  # three levels of branches
    big = [(b"a", b"x" * 3 * PAGE_SIZE), (b"b", b"y"), (b"c", b"z" * 70_000)]  # values on overflow pages
    buckets = {b"empty": [], b"small": [(b"one", b"1")], b"many": many, b"big": big}
    got = read_all(build(tmp_path / "db", buckets, nested=True))
    assert got == {**{name: dict(items) for name, items in buckets.items()},
                   b"outer": {b"a-plain": b"v", b"inner": {b"x": b"1"}}}


def test_small_buckets_are_inline_as_bbolt_keeps_them() -> None:
    w = BoltWriter(io.BytesIO())
    value = w.bucket([(b"k", b"v", 0)])
    assert BUCKET_HEADER.unpack_from(value) == (0, 0) and len(value) == 16 + 16 + 16 + 2
    assert BUCKET_HEADER.unpack_from(w.bucket([(b"k", b"v" * PAGE_SIZE, 0)]))[0] == 3  # too big: a page


def test_keys_must_come_in_order() -> None:
    w = BoltWriter(io.BytesIO())
    with pytest.raises(ValueError, match="out of order"):
        w.bucket([(b"b", b"", 0), (b"a", b"", 0)])


def _meta_at(data: bytearray, page: int) -> tuple[int, ...]:
    return META.unpack_from(data, page * PAGE_SIZE + PAGE_HEADER.size)


def test_a_damaged_meta_page_falls_back_to_the_other(tmp_path: Path) -> None:
    path = build(tmp_path / "db", {b"b": [(b"k", b"v")]})
    data = bytearray(path.read_bytes())
    assert _meta_at(data, 0)[8] == 2 and _meta_at(data, 1)[8] == 1  # meta 0 has the higher txid
    data[PAGE_HEADER.size + 20] ^= 0xFF  # its root page: the checksum no longer matches
    path.write_bytes(bytes(data))
    assert read_all(path) == {b"b": {b"k": b"v"}}


def _page(data: bytearray, pgid: int) -> tuple[int, int, int, int]:
    return PAGE_HEADER.unpack_from(data, pgid * PAGE_SIZE)


def _reseal_meta(data: bytearray, **changes: int) -> None:
    names = ["magic", "version", "page_size", "flags", "root", "sequence", "freelist", "pgid", "txid"]
    for page in (0, 1):
        at = page * PAGE_SIZE + PAGE_HEADER.size
        fields = dict(zip(names, META.unpack_from(data, at)))
        fields.update(changes)
        raw = META.pack(*fields.values())
        data[at:at + META.size + 8] = raw + struct.pack("<Q", fnv64a(raw))


def test_structural_damage_is_named(tmp_path: Path) -> None:
    path = build(tmp_path / "db", {b"many": [(b"k%05d" % i, b"v" * 40) for i in range(2000)]})
    clean = bytearray(path.read_bytes())
    pgid = len(clean) // PAGE_SIZE

    def refuse(data: bytearray, message: str) -> None:
        path.write_bytes(bytes(data))
        with pytest.raises(BoltError) as err:
            read_all(path)
        assert str(err.value) == message

    # pages past the end: the meta counts fewer pages than the tree uses (the root is the last)
    data = bytearray(clean)
    _reseal_meta(data, pgid=pgid - 1)
    refuse(data, f"the root bucket's page {pgid - 1} is out of bounds ({pgid - 1} pages)")

    # the file holds fewer pages than the meta counts
    refuse(clean[:-PAGE_SIZE], f"the meta page counts {pgid} pages of {PAGE_SIZE} bytes, more than the file's "
                               f"{len(clean) - PAGE_SIZE} bytes")
    # a branch pointing twice at the same child
    branch = next(p for p in range(3, pgid) if _page(clean, p)[1] == BRANCH_PAGE)
    data = bytearray(clean)
    first_child = struct.unpack_from("<Q", data, branch * PAGE_SIZE + PAGE_HEADER.size + 8)[0]
    struct.pack_into("<Q", data, branch * PAGE_SIZE + PAGE_HEADER.size + 16 + 8, first_child)
    refuse(data, f"page {first_child}: multiple references")
    # a page nobody references, with a freelist that does not list it either
    data = bytearray(clean) + bytearray(PAGE_SIZE)
    struct.pack_into("<QHHI", data, pgid * PAGE_SIZE, pgid, LEAF_PAGE, 0, 0)
    _reseal_meta(data, pgid=pgid + 1)
    refuse(data, f"page {pgid}: unreachable unfreed")
    # keys out of order across two leaves
    leaves = [p for p in range(3, pgid) if _page(clean, p)[1] == LEAF_PAGE]
    data = bytearray(clean)
    data[leaves[1] * PAGE_SIZE:(leaves[1] + 1) * PAGE_SIZE] = clean[leaves[0] * PAGE_SIZE:(leaves[0] + 1) * PAGE_SIZE]
    struct.pack_into("<Q", data, leaves[1] * PAGE_SIZE, leaves[1])
    refuse(data, f"page {leaves[1]}: key outside the range its branch assigns")


def test_a_page_spanning_too_much_is_refused_not_read(tmp_path: Path) -> None:
    """A crafted overflow count would make the reader hold the span in memory: past 256 MiB it refuses."""
    path = build(tmp_path / "db", {b"many": [(b"k%05d" % i, b"v" * 40) for i in range(2000)]})
    data = bytearray(path.read_bytes())
    pages = (300 << 20) // PAGE_SIZE
    _reseal_meta(data, pgid=pages)
    leaf = next(p for p in range(3, len(data) // PAGE_SIZE) if _page(data, p)[1] == LEAF_PAGE)
    struct.pack_into("<I", data, leaf * PAGE_SIZE + 12, 70_000)  # its overflow count
    path.write_bytes(bytes(data))
    os.truncate(path, pages * PAGE_SIZE)  # sparse: the file is as long as the meta says
    with pytest.raises(BoltError) as err:
        read_all(path)
    assert str(err.value) == f"page {leaf} spans 70001 pages, more than the 256 MiB a page may take here"
