"""Protocol Buffers wire format by hand, for the few etcd messages etcdlite has no generated code for.

etcd's on-disk records (``leasepb.Lease`` in the lease bucket, ``walpb.Record``, ``raftpb.Entry`` and
``raftpb.HardState`` in the WAL, the envelope of ``etcdserverpb.InternalRaftRequest``) are small and
flat: reading their fields by number is simpler than vendoring and generating four more protos.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MAX_FIELD = (1 << 29) - 1


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def encode_varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s are ten bytes, as Go writes them
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes, off: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if off >= len(buf):
            raise WireError("truncated varint")
        b = buf[off]
        off += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, off
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than ten bytes")


def as_int64(n: int) -> int:
    """A varint read back as Go's int64."""
    n &= (1 << 64) - 1
    return n - (1 << 64) if n >= 1 << 63 else n


def int_field(field: int, value: int) -> bytes:
    """A varint field; zero is left out, as proto3 leaves it out."""
    return encode_varint(field << 3 | VARINT) + encode_varint(value) if value else b""


def bytes_field(field: int, value: bytes) -> bytes:
    return encode_varint(field << 3 | LENGTH) + encode_varint(len(value)) + value


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)``: an int for varints and fixed fields, bytes for the rest."""
    off, n = 0, len(buf)
    while off < n:
        key, off = decode_varint(buf, off)
        field, wire = key >> 3, key & 7
        if not 0 < field <= _MAX_FIELD:
            raise WireError(f"field number {field}")
        if wire == VARINT:
            value, off = decode_varint(buf, off)
            yield field, wire, value
        elif wire == LENGTH:
            size, off = decode_varint(buf, off)
            if off + size > n:
                raise WireError(f"field {field} runs past the end of the message")
            yield field, wire, buf[off:off + size]
            off += size
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if off + size > n:
                raise WireError(f"field {field} runs past the end of the message")
            yield field, wire, int.from_bytes(buf[off:off + size], "little")
            off += size
        else:
            raise WireError(f"wire type {wire} of field {field}")


def int_fields(buf: bytes, names: dict[int, str]) -> dict[str, int]:
    """The varint fields ``names`` lists, as int64s (0 when absent); other fields are skipped."""
    out = dict.fromkeys(names.values(), 0)
    for field, wire, value in iter_fields(buf):
        if field in names:
            if wire != VARINT:
                raise WireError(f"field {names[field]} has wire type {wire}, not varint")
            assert isinstance(value, int)
            out[names[field]] = as_int64(value)
    return out
