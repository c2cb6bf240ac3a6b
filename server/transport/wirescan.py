"""What to answer when upb refuses a request that grpc-go (and so etcd) would decode.

upb, the protobuf runtime under grpcio, refuses messages nested more than 100 deep and string
fields that are not UTF-8; etcd's gogo-generated decoder does neither. A Txn holding nested Txns
reaches 100 levels at 49 of them, well within etcd's own bound (``--max-txn-ops``, 128 by default:
each nested level spends one op of the budget, so deeper ones fail with "too many operations").
So when upb refuses a request, the wire bytes are walked here (without recursion, guided by the
message's descriptor) to tell why:

* nested deeper than upb's default but within what etcdlite's recursive handlers safely take
  (``MAX_DEPTH``): decoded again with upb's depth limit lifted, and served as etcd serves it;
* a Txn nested beyond ``--max-txn-ops``: etcd's INVALID_ARGUMENT "too many operations";
* deeper still (only with a ``--max-txn-ops`` above ``MAX_TXN_NESTING``): INVALID_ARGUMENT, said plainly;
* a string field that is not UTF-8 (Python strings cannot hold it): INVALID_ARGUMENT naming the field;
* cut short: grpc-go's INTERNAL "unexpected EOF"; anything else: INTERNAL with upb's words.

This runs only after upb failed, never on the path of a well-formed request.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import api_implementation
from google.protobuf.message import DecodeError, Message

from .. import errors
from ..api.status import GRPC_CODE

MAX_TXN_NESTING = 256  # the KV handlers recurse per nested Txn: well inside Python's recursion limit
MAX_DEPTH = 2 * MAX_TXN_NESTING + 3  # TxnRequest > RequestOp > TxnRequest ... > RequestOp > PutRequest
_UNMARSHAL = "grpc: error unmarshalling request: "


class _Truncated(Exception):
    """The bytes end inside a field."""


class _Malformed(Exception):
    """A wire type or field number no decoder takes."""


@dataclass
class WireScan:
    depth: int = 1  # deepest nesting reached (the request itself is 1)
    recursion: int = 0  # most messages of the request's own type inside one another, below it
    too_deep: bool = False  # stopped at MAX_DEPTH
    bad_utf8: FieldDescriptor | None = None  # the first string field that is not UTF-8


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Malformed


def scan(data: bytes, root: Descriptor, max_depth: int = MAX_DEPTH) -> WireScan:
    """Walk ``data`` as a ``root`` message; _Truncated / _Malformed when it is not one."""
    out = WireScan()
    stack: list[tuple[Descriptor, int, int]] = [(root, len(data), 0)]  # (type, end, roots above)
    pos = 0
    while stack:
        desc, end, roots = stack[-1]
        if pos == end:
            stack.pop()
            continue
        tag, pos = _varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise _Malformed
        if wire_type == 0:
            _, pos = _varint(data, pos, end)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            if pos > end:
                raise _Truncated
        elif wire_type == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _Truncated
            field = desc.fields_by_number.get(number)
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                if len(stack) + 1 > max_depth:
                    out.too_deep = True
                    return out
                sub = field.message_type
                nested = roots + (sub is root)
                stack.append((sub, pos + length, nested))
                out.depth = max(out.depth, len(stack))
                out.recursion = max(out.recursion, nested)
                continue
            if field is not None and field.type == FieldDescriptor.TYPE_STRING and out.bad_utf8 is None:
                try:
                    data[pos:pos + length].decode("utf-8")
                except UnicodeDecodeError:
                    out.bad_utf8 = field
            pos += length
        else:  # groups (3, 4) are not in etcd's protos; 6 and 7 do not exist
            raise _Malformed
    return out


def _decode_deep(cls: type[Message], data: bytes) -> Message:
    """Decode with upb's nesting limit lifted; only called once the depth is known to be bounded."""
    if api_implementation.Type() != "upb":
        raise DecodeError("message nested too deeply for this protobuf runtime")
    from google._upb import _message as upb  # type: ignore[attr-defined]

    upb.SetAllowOversizeProtos(True)
    try:
        return cls.FromString(data)
    finally:
        upb.SetAllowOversizeProtos(False)


def redecode(cls: type[Message], data: bytes, error: DecodeError,
             max_txn_ops: int) -> Message | tuple[grpc.StatusCode, str]:
    """The request upb refused with ``error``, or the (code, message) to refuse it with."""
    try:
        found = scan(data, cls.DESCRIPTOR)
    except _Truncated:
        return grpc.StatusCode.INTERNAL, _UNMARSHAL + "unexpected EOF"
    except _Malformed:
        return grpc.StatusCode.INTERNAL, _UNMARSHAL + str(error)
    name = cls.DESCRIPTOR.full_name
    if name == "etcdserverpb.TxnRequest" and (found.recursion > max_txn_ops or
                                              (found.too_deep and MAX_TXN_NESTING >= max_txn_ops)):
        return GRPC_CODE[errors.TOO_MANY_OPS.code], errors.TOO_MANY_OPS.message  # what etcd's checkTxnRequest says
    if found.too_deep:
        return grpc.StatusCode.INVALID_ARGUMENT, (
            f"etcdlite: {name} is nested more than {MAX_DEPTH} messages deep "
            f"(a Txn takes at most {MAX_TXN_NESTING} nested Txns)")
    if found.bad_utf8 is not None:
        return grpc.StatusCode.INVALID_ARGUMENT, (
            f"etcdlite: {found.bad_utf8.full_name} is not valid UTF-8 (etcdlite takes UTF-8 strings only)")
    try:
        return _decode_deep(cls, data)
    except DecodeError as exc:
        return grpc.StatusCode.INTERNAL, _UNMARSHAL + str(exc)
