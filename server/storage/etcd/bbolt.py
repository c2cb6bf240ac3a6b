"""bbolt's file format (go.etcd.io/bbolt, format version 2): a streaming writer and a validating reader.

A bbolt file is an array of pages (4096 bytes here, as bbolt picks on Linux/amd64).  Every page starts
with a 16-byte header ``u64 id | u16 flags | u16 count | u32 overflow`` (a page whose content does not
fit spans ``overflow`` more pages).  All integers are little-endian.

* Pages 0 and 1 are *meta* pages: ``u32 magic 0xED0CDAED | u32 version 2 | u32 page size | u32 flags |
  u64 root bucket page | u64 root bucket sequence | u64 freelist page | u64 page count (the high water
  mark) | u64 txid | u64 FNV-1a-64 of the preceding 56 bytes``.  The valid one with the higher txid wins.
* A *freelist* page lists free page ids (u64 each; a count of 0xFFFF means the first u64 is the count).
* A bucket is a B+tree: *leaf* pages hold elements ``u32 flags | u32 pos | u32 ksize | u32 vsize``
  (pos counts from the element itself to its key, the value follows the key), *branch* pages
  ``u32 pos | u32 ksize | u64 child page`` keyed by each child's first key.  A leaf element with flag 1
  is a nested bucket; its value is ``u64 root page | u64 sequence``, and a bucket with root page 0 is
  *inline*: its one leaf page follows that header inside the value.  The meta page's root bucket holds
  the top-level buckets.

``BoltWriter`` writes a new file page by page in one sequential pass (leaves as they fill, the branch
levels above them as those fill, each bucket's root last), holding no more than one page per tree level;
the two meta pages, which name the root, come at the end from ``meta_pages()`` and belong at the file's
start.  ``BoltReader`` walks a file through ``os.pread`` with the same bounded memory and checks what
bbolt's ``Tx.Check`` checks (every page in bounds, of the right type, referenced once, reachable or
free) plus element bounds and key order, raising ``BoltError`` with one line on the first problem.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2
BRANCH_PAGE, LEAF_PAGE, META_PAGE, FREELIST_PAGE = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF  # bbolt's pgidNoFreelist (NoFreelistSync)
MAX_DEPTH = 64  # far above any real tree (a 4 KiB page has at least 2 children): stops a crafted loop
# A page is read whole: one spanning more than this is refused rather than held in memory.  etcd never
# writes one (its values are bounded by --max-request-bytes, 1.5 MiB by default).
MAX_PAGE_SPAN = 256 * 1024 * 1024

PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid
CHECKSUM = struct.Struct("<Q")
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
BUCKET_HEADER = struct.Struct("<QQ")  # root page, sequence
_U64 = struct.Struct("<Q")

_FNV_OFFSET, _FNV_PRIME, _MASK64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


class BoltError(ValueError):
    """The file is not a sound bbolt database; the message says where."""


def fnv64a(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h


def _page_bytes(pgid: int, flags: int, count: int, body: bytes, page_size: int) -> bytes:
    """A page (with its overflow pages) holding ``body`` after the header, zero-padded."""
    size = PAGE_HEADER.size + len(body)
    pages = -(-size // page_size)
    return b"".join((PAGE_HEADER.pack(pgid, flags, count, pages - 1), body, bytes(pages * page_size - size)))


def _leaf_body(items: list[tuple[bytes, bytes, int]]) -> bytes:
    """Elements then keys and values; ``pos`` is relative to the element (bbolt's layout)."""
    elements: list[bytes] = []
    data: list[bytes] = []
    data_off = LEAF_ELEMENT.size * len(items)
    for i, (key, value, flags) in enumerate(items):
        elements.append(LEAF_ELEMENT.pack(flags, data_off - i * LEAF_ELEMENT.size, len(key), len(value)))
        data.append(key)
        data.append(value)
        data_off += len(key) + len(value)
    return b"".join(elements + data)


def _branch_body(children: list[tuple[bytes, int]]) -> bytes:
    elements: list[bytes] = []
    keys: list[bytes] = []
    data_off = BRANCH_ELEMENT.size * len(children)
    for i, (key, pgid) in enumerate(children):
        elements.append(BRANCH_ELEMENT.pack(data_off - i * BRANCH_ELEMENT.size, len(key), pgid))
        keys.append(key)
        data_off += len(key)
    return b"".join(elements + keys)


# -- writing -------------------------------------------------------------------------------------
class BoltWriter:
    """Writes pages 2, 3, ... of a new bbolt file to ``out``; ``finish`` returns pages 0 and 1.

    Page 2 is an empty freelist (nothing is free in a file written in one go).  ``bucket(items)``
    writes a bucket from ``(key, value, flags)`` in strictly increasing key order and returns the
    value its parent stores for it (nested buckets are written first, then passed as an item with
    ``BUCKET_LEAF_FLAG``); ``finish(items)`` writes the root bucket and returns the meta pages.
    """

    def __init__(self, out: BinaryIO, page_size: int = PAGE_SIZE) -> None:
        self._out = out
        self.page_size = page_size
        self.next_pgid = 2
        self._write_page(FREELIST_PAGE, 0, b"")

    def _write_page(self, flags: int, count: int, body: bytes) -> int:
        pgid = self.next_pgid
        page = _page_bytes(pgid, flags, count, body, self.page_size)
        self._out.write(page)
        self.next_pgid += len(page) // self.page_size
        return pgid

    def bucket(self, items: Iterable[tuple[bytes, bytes, int]], sequence: int = 0, inline: bool = True) -> bytes:
        """Write a bucket; small ones (a quarter page, no nested buckets) go inline, as bbolt keeps them."""
        limit = self.page_size // 4 if inline else -1
        pending: list[tuple[bytes, bytes, int]] = []
        size = PAGE_HEADER.size
        it = iter(items)
        tree: _TreeBuilder | None = None
        for item in it:
            pending.append(item)
            size += LEAF_ELEMENT.size + len(item[0]) + len(item[1])
            if size > limit or item[2] & BUCKET_LEAF_FLAG:
                tree = _TreeBuilder(self)
                for held in pending:
                    tree.add(*held)
                for rest in it:
                    tree.add(*rest)
                break
        if tree is None and inline:
            page = PAGE_HEADER.pack(0, LEAF_PAGE, len(pending), 0) + _leaf_body(_checked_order(pending))
            return BUCKET_HEADER.pack(0, sequence) + page
        if tree is None:
            tree = _TreeBuilder(self)
            for held in pending:
                tree.add(*held)
        return BUCKET_HEADER.pack(tree.finish(), sequence)

    def finish(self, items: Iterable[tuple[bytes, bytes, int]], txid: int = 2) -> bytes:
        """Write the root bucket (never inline: the meta page names its page); returns pages 0 and 1."""
        root = BUCKET_HEADER.unpack(self.bucket(items, inline=False))[0]
        return meta_pages(self.page_size, root, 2, self.next_pgid, txid)

    @property
    def size(self) -> int:
        """The whole file's size, meta pages included."""
        return self.next_pgid * self.page_size


def _checked_order(items: list[tuple[bytes, bytes, int]]) -> list[tuple[bytes, bytes, int]]:
    for a, b in zip(items, items[1:]):
        if not a[0] < b[0]:
            raise ValueError(f"bbolt keys out of order: {a[0]!r} before {b[0]!r}")
    if items and not items[0][0]:
        raise ValueError("bbolt keys must not be empty")
    return items


def meta_pages(page_size: int, root: int, freelist: int, pgid: int, txid: int) -> bytes:
    """Meta pages 0 and 1 as ``Tx.WriteTo`` writes them: the same meta, page 1 with txid - 1."""
    out = []
    for page_id, tx in ((0, txid), (1, txid - 1)):
        meta = META.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, pgid, tx)
        body = meta + CHECKSUM.pack(fnv64a(meta))
        out.append(_page_bytes(page_id, META_PAGE, 0, body, page_size))
    return b"".join(out)


class _TreeBuilder:
    """Bulk-loads a B+tree from sorted items: full leaves, and per level one branch page being filled."""

    def __init__(self, writer: BoltWriter) -> None:
        self._w = writer
        self._limit = writer.page_size
        self._leaf: list[tuple[bytes, bytes, int]] = []
        self._leaf_size = PAGE_HEADER.size
        self._levels: list[list[tuple[bytes, int]]] = []  # branch entries (first key, page) per level
        self._level_sizes: list[int] = []
        self._last: bytes | None = None

    def add(self, key: bytes, value: bytes, flags: int) -> None:
        if self._last is not None and not self._last < key:
            raise ValueError(f"bbolt keys out of order: {self._last!r} before {key!r}")
        if not key:
            raise ValueError("bbolt keys must not be empty")
        self._last = key
        size = LEAF_ELEMENT.size + len(key) + len(value)
        if self._leaf and self._leaf_size + size > self._limit:
            self._flush_leaf()
        self._leaf.append((key, value, flags))
        self._leaf_size += size

    def _flush_leaf(self) -> None:
        leaf = self._leaf
        pgid = self._w._write_page(LEAF_PAGE, len(leaf), _leaf_body(leaf))
        self._push(0, leaf[0][0] if leaf else b"", pgid)
        self._leaf = []
        self._leaf_size = PAGE_HEADER.size

    def _push(self, level: int, key: bytes, pgid: int) -> None:
        if level == len(self._levels):
            self._levels.append([])
            self._level_sizes.append(PAGE_HEADER.size)
        size = BRANCH_ELEMENT.size + len(key)
        if len(self._levels[level]) >= 2 and self._level_sizes[level] + size > self._limit:
            self._flush_level(level)
        self._levels[level].append((key, pgid))
        self._level_sizes[level] += size

    def _flush_level(self, level: int) -> None:
        children = self._levels[level]
        pgid = self._w._write_page(BRANCH_PAGE, len(children), _branch_body(children))
        self._levels[level] = []
        self._level_sizes[level] = PAGE_HEADER.size
        self._push(level + 1, children[0][0], pgid)

    def finish(self) -> int:
        """Writes what is still held, bottom up; returns the root page."""
        if self._leaf or not self._levels:
            self._flush_leaf()
        level = 0
        while True:
            children = self._levels[level]
            if level == len(self._levels) - 1 and len(children) == 1:
                return children[0][1]
            self._flush_level(level)
            level += 1


# -- reading -------------------------------------------------------------------------------------
class BoltReader:
    """A bbolt file opened for a validating walk (``items``); ``finish_check`` after every bucket was walked.

    ``limit`` is where the database ends within the file (an etcd snapshot carries a SHA-256 after it).
    """

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._limit = limit
        meta = self._read_meta()
        self.page_size: int = meta[2]
        self.root: int = meta[4]
        self.freelist_page: int = meta[6]
        self.pgid: int = meta[7]
        self.txid: int = meta[8]
        if self.pgid * self.page_size > limit:
            raise BoltError(f"the meta page counts {self.pgid} pages of {self.page_size} bytes, "
                            f"more than the file's {limit} bytes")
        self._seen = bytearray((self.pgid + 7) // 8)
        self._free = bytearray((self.pgid + 7) // 8)
        self._mark(0)
        self._mark(1)
        if self.root < 2 or self.root >= self.pgid:
            raise BoltError(f"the root bucket's page {self.root} is out of bounds ({self.pgid} pages)")
        if self.freelist_page != NO_FREELIST:
            self._read_freelist()

    # -- pages
    def _read_meta(self) -> tuple[int, ...]:
        candidates = []
        # meta 0 at the start; meta 1 one page later, at whichever page size it names
        for offset in (0, 4096, 512, 1024, 2048, 8192, 16384, 32768, 65536):
            head = os.pread(self._fd, PAGE_HEADER.size + META.size + CHECKSUM.size, offset)
            if len(head) < PAGE_HEADER.size + META.size + CHECKSUM.size:
                continue
            pgid, flags = PAGE_HEADER.unpack_from(head)[:2]
            meta = META.unpack_from(head, PAGE_HEADER.size)
            raw = head[PAGE_HEADER.size:PAGE_HEADER.size + META.size]
            (checksum,) = CHECKSUM.unpack_from(head, PAGE_HEADER.size + META.size)
            expected_id = 0 if offset == 0 else 1
            if meta[0] != MAGIC or meta[1] != VERSION or not flags & META_PAGE or pgid != expected_id:
                continue
            if checksum != fnv64a(raw) or (offset and meta[2] != offset):
                continue
            if meta[2] < 512 or meta[2] & (meta[2] - 1):
                continue
            candidates.append(meta)
        if not candidates:
            raise BoltError("no valid bbolt meta page (not a bbolt database, or both meta pages damaged)")
        return max(candidates, key=lambda m: m[8])

    def _mark(self, pgid: int) -> None:
        byte, bit = divmod(pgid, 8)
        if self._seen[byte] >> bit & 1:
            raise BoltError(f"page {pgid}: multiple references")
        if self._free[byte] >> bit & 1:
            raise BoltError(f"page {pgid}: reachable freed")
        self._seen[byte] |= 1 << bit

    def _read_page(self, pgid: int, flags: int) -> tuple[bytes, int]:
        """The page's bytes (overflow included) and its element count; marks its pages reachable."""
        if pgid < 2 or pgid >= self.pgid:
            raise BoltError(f"page {pgid}: out of bounds: {self.pgid}")
        head = os.pread(self._fd, self.page_size, pgid * self.page_size)
        if len(head) < PAGE_HEADER.size:
            raise BoltError(f"page {pgid}: truncated")
        page_id, page_flags, count, overflow = PAGE_HEADER.unpack_from(head)
        if page_id != pgid:
            raise BoltError(f"page {pgid}: its header says page {page_id}")
        if not page_flags & flags:
            raise BoltError(f"page {pgid}: invalid type {page_flags:#x} where {flags:#x} was expected")
        if pgid + overflow >= self.pgid:
            raise BoltError(f"page {pgid}: its {overflow} overflow pages run past the end ({self.pgid} pages)")
        if (overflow + 1) * self.page_size > MAX_PAGE_SPAN:
            raise BoltError(f"page {pgid} spans {overflow + 1} pages, more than the {MAX_PAGE_SPAN >> 20} MiB "
                            f"a page may take here")
        for i in range(overflow + 1):
            self._mark(pgid + i)
        data = head if not overflow else os.pread(self._fd, (overflow + 1) * self.page_size, pgid * self.page_size)
        return data, count

    def _read_freelist(self) -> None:
        if self.freelist_page < 2 or self.freelist_page >= self.pgid:
            raise BoltError(f"the freelist page {self.freelist_page} is out of bounds ({self.pgid} pages)")
        data, count = self._read_page(self.freelist_page, FREELIST_PAGE)
        start = PAGE_HEADER.size
        if count == 0xFFFF:
            count = _U64.unpack_from(data, start)[0] if len(data) >= start + 8 else -1
            start += 8
        if count < 0 or start + 8 * count > len(data):
            raise BoltError(f"the freelist page {self.freelist_page} lists more ids than it holds")
        for (free,) in _U64.iter_unpack(data[start:start + 8 * count]):
            if free < 2 or free >= self.pgid:
                raise BoltError(f"the freelist names page {free}, out of bounds ({self.pgid} pages)")
            byte, bit = divmod(free, 8)
            if self._free[byte] >> bit & 1:
                raise BoltError(f"page {free}: already freed")
            if self._seen[byte] >> bit & 1:
                raise BoltError(f"page {free}: reachable freed")
            self._free[byte] |= 1 << bit

    # -- buckets
    def root_items(self) -> Iterator[tuple[bytes, bytes, int]]:
        return self._walk(self.root, 0, None, None)

    def items(self, bucket_value: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        """``(key, value, flags)`` of a nested bucket (the value its parent holds), in key order."""
        if len(bucket_value) < BUCKET_HEADER.size:
            raise BoltError(f"a bucket value of {len(bucket_value)} bytes is shorter than a bucket header")
        root = BUCKET_HEADER.unpack_from(bucket_value)[0]
        if root:
            return self._walk(root, 0, None, None)
        return self._inline(bucket_value[BUCKET_HEADER.size:])

    def last_key(self, bucket_value: bytes) -> bytes | None:
        """The bucket's greatest key, down its rightmost path (those pages are not counted as walked)."""
        root = BUCKET_HEADER.unpack_from(bucket_value)[0]
        if not root:
            last = None
            for key, _, _ in self._inline(bucket_value[BUCKET_HEADER.size:]):
                last = key
            return last
        pgid = root
        for _ in range(MAX_DEPTH):
            if pgid < 2 or pgid >= self.pgid:
                raise BoltError(f"page {pgid}: out of bounds: {self.pgid}")
            data = os.pread(self._fd, self.page_size, pgid * self.page_size)
            if len(data) < PAGE_HEADER.size:
                raise BoltError(f"page {pgid}: truncated")
            flags, count, overflow = PAGE_HEADER.unpack_from(data)[1:]
            if pgid + overflow >= self.pgid or (overflow + 1) * self.page_size > MAX_PAGE_SPAN:
                raise BoltError(f"page {pgid}: {overflow} overflow pages")
            if overflow:
                data = os.pread(self._fd, (overflow + 1) * self.page_size, pgid * self.page_size)
            if flags & LEAF_PAGE:
                last = None
                for key, _, _ in _leaf_items(data, count, f"page {pgid}", None, None):
                    last = key
                return last
            if not flags & BRANCH_PAGE or not count:
                raise BoltError(f"page {pgid}: invalid type {flags:#x} where a branch or leaf was expected")
            pgid = _branch_children(data, count, pgid)[-1][1]
        raise BoltError(f"page {root}: the tree is deeper than {MAX_DEPTH} levels")

    def _inline(self, page: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        if len(page) < PAGE_HEADER.size:
            raise BoltError("an inline bucket is shorter than a page header")
        flags, count = PAGE_HEADER.unpack_from(page)[1:3]
        if not flags & LEAF_PAGE:
            raise BoltError(f"an inline bucket's page has type {flags:#x}, not leaf")
        yield from _leaf_items(page, count, "an inline bucket", None, None)

    def _walk(self, pgid: int, depth: int, low: bytes | None, high: bytes | None
              ) -> Iterator[tuple[bytes, bytes, int]]:
        if depth > MAX_DEPTH:
            raise BoltError(f"page {pgid}: the tree is deeper than {MAX_DEPTH} levels")
        data, count = self._read_page(pgid, BRANCH_PAGE | LEAF_PAGE)
        flags = PAGE_HEADER.unpack_from(data)[1]
        if flags & LEAF_PAGE:
            yield from _leaf_items(data, count, f"page {pgid}", low, high)
            return
        if count == 0:
            raise BoltError(f"page {pgid}: a branch page without elements")
        children = _branch_children(data, count, pgid)
        for i, (key, child) in enumerate(children):
            if i and not children[i - 1][0] < key:
                raise BoltError(f"page {pgid}: branch keys out of order")
            child_low = key if i else low  # keys left of the first separator are still >= the parent's bound
            child_high = children[i + 1][0] if i + 1 < len(children) else high
            yield from self._walk(child, depth + 1, child_low, child_high)

    def finish_check(self) -> None:
        """After every bucket was walked: no page below the high water mark is lost (``Tx.Check``)."""
        if self.freelist_page == NO_FREELIST:
            return  # free pages are whatever is unreachable (bbolt's NoFreelistSync)
        for pgid in range(2, self.pgid):
            byte, bit = divmod(pgid, 8)
            if not (self._seen[byte] | self._free[byte]) >> bit & 1:
                raise BoltError(f"page {pgid}: unreachable unfreed")


def _branch_children(data: bytes, count: int, pgid: int) -> list[tuple[bytes, int]]:
    out = []
    for i in range(count):
        at = PAGE_HEADER.size + i * BRANCH_ELEMENT.size
        if at + BRANCH_ELEMENT.size > len(data):
            raise BoltError(f"page {pgid}: {count} branch elements do not fit")
        pos, ksize, child = BRANCH_ELEMENT.unpack_from(data, at)
        if not ksize or at + pos + ksize > len(data):
            raise BoltError(f"page {pgid}: branch element {i} points outside the page")
        out.append((data[at + pos:at + pos + ksize], child))
    return out


def _leaf_items(data: bytes, count: int, where: str, low: bytes | None, high: bytes | None
                ) -> Iterator[tuple[bytes, bytes, int]]:
    """A leaf's items, each checked to lie inside the page and, in order, inside [low, high)."""
    prev = None
    n = len(data)
    unpack = LEAF_ELEMENT.unpack_from
    for i in range(count):
        at = PAGE_HEADER.size + i * LEAF_ELEMENT.size
        if at + LEAF_ELEMENT.size > n:
            raise BoltError(f"{where}: {count} leaf elements do not fit")
        flags, pos, ksize, vsize = unpack(data, at)
        start = at + pos
        if not ksize or start + ksize + vsize > n:
            raise BoltError(f"{where}: leaf element {i} points outside the page")
        key = data[start:start + ksize]
        if prev is not None and not prev < key:
            raise BoltError(f"{where}: keys out of order")
        if (low is not None and key < low) or (high is not None and key >= high):
            raise BoltError(f"{where}: key outside the range its branch assigns")
        prev = key
        yield key, data[start + ksize:start + ksize + vsize], flags
