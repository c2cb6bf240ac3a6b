"""Issue 16.7: what upb refuses and etcd's decoder takes (Txns nested past 100 messages, strings
that are not UTF-8), and gRPC metadata up to grpc-go's 16 MiB."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.transport.wirescan import MAX_TXN_NESTING, scan
from harness import Client, Err, EtcdProcess


@pytest.fixture(autouse=True)
def deep_protos() -> Iterator[None]:
    """This process must parse the servers' deep TxnResponses (a Go client would; upb needs asking)."""
    from google._upb import _message as upb

    upb.SetAllowOversizeProtos(True)
    yield
    upb.SetAllowOversizeProtos(False)


def nested_txn(depth: int, key: bytes = b"deep") -> pb.TxnRequest:
    """A Txn holding ``depth`` Txns inside one another, the innermost putting ``key``."""
    top = pb.TxnRequest()
    cur = top
    for _ in range(depth):
        cur = cur.success.add().request_txn
    cur.success.add().request_put.CopyFrom(pb.PutRequest(key=key, value=str(depth).encode()))
    return top


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def nested_txn_bytes(depth: int) -> bytes:
    """nested_txn(depth) encoded without recursion (upb's own encoder overflows the C stack near
    20,000 levels): every level is a tag and a length in front of the levels inside it."""
    core = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
        key=b"deep", value=str(depth).encode()))]).SerializeToString()
    prefixes: list[bytes] = []
    length = len(core)
    for _ in range(depth):
        for tag in (0x22, 0x12):  # RequestOp.request_txn (4), then TxnRequest.success (2)
            prefix = bytes([tag]) + _varint(length)
            prefixes.append(prefix)
            length += len(prefix)
    return b"".join(reversed(prefixes)) + core


def txn_call(c: Client, depth: int) -> Any:
    """Txn ``nested_txn(depth)``, recorded as (revision, nesting of the answer): the harness's own
    recording recurses per level, too deep for Python here."""
    try:
        resp = c.stubs.kv.Txn(nested_txn(depth), timeout=30)
    except grpc.RpcError as exc:
        out: Any = Err(exc.code().name, exc.details())
    else:
        levels, cur = 0, resp
        while cur.responses and cur.responses[0].WhichOneof("response") == "response_txn":
            levels, cur = levels + 1, cur.responses[0].response_txn
        out = {"revision": resp.header.revision, "succeeded": resp.succeeded, "nested": levels}
    return c.record(f"Txn nested {depth} deep", out)


def raw_call(c: Client, method: str, data: bytes, resp_cls: Any) -> Any:
    """A request sent as raw bytes (what a Go client can encode and Python cannot)."""
    call = c.stubs.channel.unary_unary(method, request_serializer=lambda b: b,
                                       response_deserializer=resp_cls.FromString)
    try:
        out: Any = call(data, timeout=10)
    except grpc.RpcError as exc:
        out = Err(exc.code().name, exc.details())
    else:
        out = "OK"
    return c.record(f"{method}({data[:40]!r})", out)


def test_upb_refuses_what_is_scanned_here() -> None:
    """The premise: upb alone refuses a Txn 50 deep (101 messages) and a non-UTF-8 string."""
    from google._upb import _message as upb
    from google.protobuf.message import DecodeError

    upb.SetAllowOversizeProtos(False)
    with pytest.raises(DecodeError, match="MaxDepth"):
        pb.TxnRequest.FromString(nested_txn(50).SerializeToString())
    with pytest.raises(DecodeError, match="UTF-8"):
        pb.AuthUserAddRequest.FromString(b"\x0a\x02\xff\xfe")
    assert nested_txn_bytes(50) == nested_txn(50).SerializeToString()
    found = scan(nested_txn(50).SerializeToString(), pb.TxnRequest.DESCRIPTOR)
    assert (found.depth, found.recursion, found.too_deep) == (103, 50, False)
    assert scan(b"\x0a\x02\xff\xfe", pb.AuthUserAddRequest.DESCRIPTOR).bad_utf8.name == "name"


def scenario_deep_txns(c: Client) -> None:
    for depth in (10, 49, 50, 100, 127, 128, 129, 1000):
        txn_call(c, depth)
    raw_call(c, "/etcdserverpb.KV/Txn", nested_txn_bytes(100_000), pb.TxnResponse)
    c.range(b"deep")


def test_deep_txns_as_etcd(differential: Callable[..., Any]) -> None:
    """Up to --max-txn-ops nesting levels are served as etcd serves them; deeper: etcd's error."""
    differential(scenario_deep_txns)


def scenario_deep_txns_with_a_larger_budget(c: Client) -> None:
    for depth in (200, MAX_TXN_NESTING):
        txn_call(c, depth)
    c.range(b"deep")


def test_deep_txns_with_a_larger_budget_as_etcd(differential: Callable[..., Any]) -> None:
    differential(scenario_deep_txns_with_a_larger_budget, args=["--max-txn-ops", "1000"])


def test_deeper_than_etcdlite_takes_is_refused_plainly(server_factory: Callable[..., EtcdProcess]) -> None:
    """etcd (whose goroutine stacks grow) takes any depth its --max-txn-ops allows; etcdlite's
    handlers recurse, so past MAX_TXN_NESTING it refuses, in words, and keeps serving."""
    srv = server_factory("etcdlite", args=["--max-txn-ops", "100000"])
    c = srv.client()
    assert txn_call(c, MAX_TXN_NESTING) == {"revision": 2, "succeeded": True, "nested": MAX_TXN_NESTING}
    assert txn_call(c, MAX_TXN_NESTING + 1) == Err(
        "INVALID_ARGUMENT", f"etcdlite: etcdserverpb.TxnRequest is nested more than {2 * MAX_TXN_NESTING + 3} "
        f"messages deep (a Txn takes at most {MAX_TXN_NESTING} nested Txns)")
    assert txn_call(c, 5000)[0] == "INVALID_ARGUMENT"
    assert raw_call(c, "/etcdserverpb.KV/Txn", nested_txn_bytes(200_000), pb.TxnResponse)[0] == "INVALID_ARGUMENT"
    assert c.put("after", "1")["header"]["revision"] == 3
    assert "Traceback" not in srv.log()


# UserAdd{name: "\xff\xfe", password: "x"}, RoleAdd{name: "\xc3"}, UserGet{name: "a\x80"}
NOT_UTF8 = [
    ("/etcdserverpb.Auth/UserAdd", b"\x0a\x02\xff\xfe\x12\x01x", pb.AuthUserAddResponse, "AuthUserAddRequest.name"),
    ("/etcdserverpb.Auth/RoleAdd", b"\x0a\x01\xc3", pb.AuthRoleAddResponse, "AuthRoleAddRequest.name"),
    ("/etcdserverpb.Auth/UserGet", b"\x0a\x02a\x80", pb.AuthUserGetResponse, "AuthUserGetRequest.name"),
]


@pytest.mark.parametrize("method, data, resp_cls, field", NOT_UTF8, ids=[m.rsplit("/", 1)[1] for m, *_ in NOT_UTF8])
def test_strings_that_are_not_utf8(target: str, method: str, data: bytes, resp_cls: Any, field: str,
                                   server_factory: Callable[..., EtcdProcess]) -> None:
    """etcd's decoder does not check UTF-8 (UserAdd/RoleAdd succeed there, UserGet finds no such
    user); a Python string cannot hold such a name, so etcdlite refuses it, naming the field."""
    srv = server_factory(target)
    c = srv.client()
    got = raw_call(c, method, data, resp_cls)
    if target == "etcd":
        assert got == "OK" or got == Err("FAILED_PRECONDITION", "etcdserver: user name not found"), got
    else:
        assert got == Err("INVALID_ARGUMENT", f"etcdlite: etcdserverpb.{field} is not valid UTF-8 "
                                              "(etcdlite takes UTF-8 strings only)")
    assert c.put("after", "1")["header"]["revision"] == 2


def scenario_truncated_requests(c: Client) -> None:
    raw_call(c, "/etcdserverpb.KV/Range", b"\x0a\x05k", pb.RangeResponse)  # a key cut short
    raw_call(c, "/etcdserverpb.KV/Range", b"\x0a\x01k\xff\xff", pb.RangeResponse)  # a tag cut short
    raw_call(c, "/etcdserverpb.KV/Put", b"\x0a\x01k\x12\x80", pb.PutResponse)  # a length cut short


def test_truncated_requests_as_etcd(differential: Callable[..., Any]) -> None:
    differential(scenario_truncated_requests)


def scenario_large_metadata(c: Client) -> None:
    for size in (16 * 1024, 100 * 1024, 1024 * 1024):
        try:
            c.stubs.kv.Range(pb.RangeRequest(key=b"k"), metadata=[("x-large", "a" * size)], timeout=10)
            out: Any = "OK"
        except grpc.RpcError as exc:
            out = Err(exc.code().name, exc.details())
        c.record(f"Range with {size} bytes of metadata", out)


def test_large_metadata_as_etcd(differential: Callable[..., Any]) -> None:
    """grpc-go takes 16 MiB of request metadata; gRPC core's default refused 16 KiB."""
    differential(scenario_large_metadata)


def test_metadata_beyond_grpc_gos_limit_is_refused(target: str, server_factory: Callable[..., EtcdProcess]) -> None:
    srv = server_factory(target)
    c = srv.client()
    with pytest.raises(grpc.RpcError):
        c.stubs.kv.Range(pb.RangeRequest(key=b"k"), metadata=[("x-large", "a" * (17 << 20))], timeout=20)
    srv._close_channel()  # etcd resets the connection
    assert srv.client().put("after", "1")["header"]["revision"] == 2
